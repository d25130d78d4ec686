//! Test tools for gfs_controld (not packaged).
