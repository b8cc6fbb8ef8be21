//! The bsce-pipe engine.
