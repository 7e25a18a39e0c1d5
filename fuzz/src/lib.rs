//! The properties the fuzz targets check.

pub mod checks;
