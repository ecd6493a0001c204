//! FIFREEZE and FITHAW: one of the crate's two places with unsafe code (the other is
//! `crate::heap`, the daemon's malloc tuning).
//!
//! Both ioctls take an int argument that the kernel ignores; the request numbers are
//! `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` (linux/fs.h).

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

nix::ioctl_readwrite!(fifreeze_raw, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw_raw, b'X', 120, libc::c_int);

/// Freezes the filesystem that `fd` (any open file or directory on it) belongs to.
///
/// Blocks until the kernel has flushed it; EBUSY means it is already frozen (by someone else),
/// EOPNOTSUPP that the filesystem cannot be frozen.
pub fn freeze(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut ignored: libc::c_int = 0;
    // SAFETY: `fd` is a live descriptor for the duration of the borrow, and the argument points
    // to a c_int that outlives the call; the kernel neither reads nor writes it.
    unsafe { fifreeze_raw(fd.as_raw_fd(), &mut ignored) }.map(drop)
}

/// Thaws the filesystem that `fd` belongs to; EINVAL means it was not frozen.
pub fn thaw(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut ignored: libc::c_int = 0;
    // SAFETY: as in `freeze`: a live borrowed descriptor and a valid, unused c_int argument.
    unsafe { fithaw_raw(fd.as_raw_fd(), &mut ignored) }.map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_numbers_match_linux_fs_h() {
        assert_eq!(nix::request_code_readwrite!(b'X', 119, 4), 0xC004_5877);
        assert_eq!(nix::request_code_readwrite!(b'X', 120, 4), 0xC004_5878);
    }
}
