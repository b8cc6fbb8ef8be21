//! Dataset preparation: readers for each source format, all producing the
//! canonical artefact of [`artefact`].
//!
//! | module           | source                                                   |
//! |------------------|----------------------------------------------------------|
//! | [`cifar`]        | CIFAR-100 python-pickle and binary archives (file or dir) |
//! | [`download`]     | resumable, checksummed download of a source archive        |
//! | [`image_folder`] | ImageNet-style class-folder trees, decoded and resized once |
//! | [`synthetic`]    | deterministic seeded class-conditional images              |

pub mod artefact;
pub mod cifar;
pub mod download;
pub mod image_folder;
pub mod synthetic;
