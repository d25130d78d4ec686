//! The Linux errno values the protocol speaks: the kernel's answers to lock_module writes,
//! dlm_controld's answers, and the negative values the core writes to `jid` to fail a mount.
//! Numbers as in the kernel's `include/uapi/asm-generic/errno*.h` (every Linux architecture
//! gfs_controld runs on uses these).

pub const EPERM: i32 = 1;
pub const ENOENT: i32 = 2;
pub const EAGAIN: i32 = 11;
pub const EBUSY: i32 = 16;
pub const ENODEV: i32 = 19;
pub const EINVAL: i32 = 22;
pub const EBADR: i32 = 53;
pub const EUSERS: i32 = 87;
pub const EOPNOTSUPP: i32 = 95;
pub const ENOTCONN: i32 = 107;
pub const ESHUTDOWN: i32 = 108;
pub const EUCLEAN: i32 = 117;
