//! Class orders: which dataset class is learned at which position.
//!
//! "Seed 1993" names three different CIFAR-100 orders in the literature
//! (numpy's shuffle, the original iCaRL script's, Python's `random`), so an
//! order is always stored as an explicit list together with how it was made.
//!
//! | module       | what it holds                                                  |
//! |--------------|----------------------------------------------------------------|
//! | [`mt19937`]  | the Mersenne Twister seeded like numpy's `RandomState(seed)`    |
//! | [`numpy`]    | numpy's legacy `shuffle`, draw for draw                         |
//! | [`icarl`]    | the original iCaRL script's order (PODNet's first order)        |
//! | [`named`]    | published and cited orders by name                              |
//! | [`spec`]     | [`OrderSpec`] from configs, resolution and validation into [`ClassOrder`] |
//! | [`artefact`] | `order.json`, the stage's output                                |

mod artefact;
mod icarl;
mod mt19937;
mod named;
mod numpy;
mod spec;

pub use artefact::{read_order, write_order, FORMAT_TAG, ORDER_FILE};
pub use icarl::icarl_order;
pub use mt19937::Mt19937;
pub use named::{named_order, named_order_names, NamedOrder};
pub use numpy::numpy_shuffled_range;
pub use spec::{resolve_order, ClassOrder, OrderGenerator, OrderProvenance, OrderSpec};
