//! Dataset preparation: readers for each source format, all producing the
//! canonical artefact of [`artefact`].
//!
//! | module           | source                                                   |
//! |------------------|----------------------------------------------------------|
//! | [`artefact_stream`] | the artefact's labels and metadata for a reader that streams its images |
//! | [`cifar`]        | CIFAR-100 python-pickle and binary archives (file or dir) |
//! | [`download`]     | resumable, checksummed download of a source archive        |
//! | [`image_folder`] | ImageNet-style class-folder trees, decoded and resized once, streamed to disk |
//! | [`resample`]     | PIL's antialiased bilinear resize (preparation, the loader's random-resized crop) |
//! | [`shard_journal`] | resumable shard-by-shard writing of preallocated files      |
//! | [`synthetic`]    | deterministic seeded class-conditional images              |

pub mod artefact;
pub mod artefact_stream;
pub mod cifar;
pub mod download;
pub mod image_folder;
pub mod resample;
pub mod shard_journal;
pub mod synthetic;
