//! `gfs_kernel_sim`'s server: the simulated kernel ([`model`]), its sysfs tree served through
//! FUSE ([`fuse`], laid out in [`sysfs`]) and the cluster's shared disk ([`disk`]).

pub mod disk;
pub mod fuse;
pub mod model;
pub mod sysfs;
