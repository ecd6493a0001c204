//! The one place with unsafe code: the FIFREEZE/FITHAW ioctls ([`ioctl`]) and the C library's
//! malloc tuning ([`heap`]). Every `unsafe` block here carries a `// SAFETY:` comment; the rest of
//! the crate denies unsafe code.

pub mod heap;
pub mod ioctl;
