//! Everything a run leaves in its --out folder: images with their parameters embedded, and the run record.
pub mod images;
pub mod out_dir;

pub use out_dir::OutDir;
