//! Class orders.
