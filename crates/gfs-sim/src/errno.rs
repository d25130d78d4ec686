//! The Linux errno values the kernel models answer with (x86 and arm numbering), in one place.
//!
//! The simulator's kernel model, the DLM model and `gfs_kernel_sim` all use these, so the two
//! kernel simulations cannot drift apart on a number.

pub const EPERM: i32 = 1;
pub const ENOENT: i32 = 2;
pub const EINTR: i32 = 4;
pub const EIO: i32 = 5;
pub const EAGAIN: i32 = 11;
pub const EACCES: i32 = 13;
pub const EBUSY: i32 = 16;
pub const ENODEV: i32 = 19;
pub const EINVAL: i32 = 22;
pub const ERANGE: i32 = 34;
pub const EUSERS: i32 = 87;
pub const EOPNOTSUPP: i32 = 95;
pub const ESHUTDOWN: i32 = 108;
pub const EROFS: i32 = 30;
