//! Backend lookup tables the datapath indexes by flow hash.
//!
//! One module per selection algorithm; today Maglev (`mh`, the default).
pub mod maglev;

pub use maglev::{Member, TableError, build as build_maglev, is_prime};
