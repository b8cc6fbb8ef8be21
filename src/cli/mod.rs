//! The binary's own modules: presentation only. Every command's logic is in
//! the library (`bsce_pipe::ops`); these print what it returns.
//!
//! | module       | prints                                                  |
//! |--------------|---------------------------------------------------------|
//! | [`args`]     | (parses) every command, flag and help text              |
//! | [`print`]    | status, explain, cache verify/gc/du/push/pull, report, results |
//! | [`reporter`] | a run's events: progress bars on a terminal, one line per event otherwise |
//! | [`inspect`]  | `order show` and `dataset inspect` (`ops::inspect`'s answers) |

pub mod args;
pub mod inspect;
pub mod print;
pub mod reporter;
