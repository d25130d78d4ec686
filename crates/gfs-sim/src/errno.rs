//! The Linux errno values the kernel models answer with (x86 and arm numbering), in one place.
//!
//! The simulator's kernel model, the DLM model and `gfs_kernel_sim` all use these, so the two
//! kernel simulations cannot drift apart on a number.

// The ones the protocol speaks are the core's (`gfs_core::errno`); the rest only the kernel
// models answer with.
pub use gfs_core::errno::{
    EAGAIN, EBUSY, EINVAL, ENODEV, ENOENT, EOPNOTSUPP, EPERM, ESHUTDOWN, EUSERS,
};
pub const EINTR: i32 = 4;
pub const EIO: i32 = 5;
pub const EACCES: i32 = 13;
pub const EROFS: i32 = 30;
pub const ERANGE: i32 = 34;
