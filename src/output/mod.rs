//! Everything a run leaves in its --out folder: images with their parameters embedded, the run record, and the
//! evaluation's tables, plots and report page.
pub mod images;
pub mod out_dir;
pub mod plots;
pub mod report_html;
pub mod sweep_report;
pub mod tables;

pub use out_dir::OutDir;
