//! The few librados and librbd calls the RBD store makes, loaded at run
//! time with `dlopen`: rtgtd builds and runs where Ceph is not installed,
//! and serves RBD wherever Debian's `librbd1` is (Ceph 16 ships
//! librbd.so.1 and librados.so.2). No maintained Rust binding fits
//! librbd 1.16, and we need about fifty functions, so we declare them here
//! from the C headers (`rbd/librbd.h`, `rados/librados.h`).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub type Rados = *mut c_void;
pub type IoCtx = *mut c_void;
pub type Image = *mut c_void;
pub type Completion = *mut c_void;
pub type WriteOp = *mut c_void;
pub type XattrIter = *mut c_void;
/// `rados_watchcb2_t`: arg, notify id, watch handle, notifier id, payload.
pub type WatchCb = unsafe extern "C" fn(
    arg: *mut c_void,
    notify_id: u64,
    handle: u64,
    notifier: u64,
    data: *mut c_void,
    len: usize,
);
/// `rados_watcherrcb_t`: arg, watch handle, error.
pub type WatchErrCb = unsafe extern "C" fn(arg: *mut c_void, handle: u64, err: c_int);
pub type Callback = unsafe extern "C" fn(c: Completion, arg: *mut c_void);
pub type DiffCallback =
    unsafe extern "C" fn(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int;

/// `rbd_config_option_t` (librbd.h).
#[repr(C)]
pub struct ConfigOption {
    pub name: *mut c_char,
    pub value: *mut c_char,
    pub source: c_int,
}

macro_rules! api {
    ($($lib:ident :: $name:ident : fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// Entry points resolved from librados and librbd.
        #[allow(non_snake_case)]
        pub struct Api {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            fn load(rados: *mut c_void, rbd: *mut c_void) -> Result<Api, String> {
                Ok(Api {
                    $($name: {
                        let h = match stringify!($lib) { "rados" => rados, _ => rbd };
                        let sym = concat!(stringify!($name), "\0");
                        // SAFETY: `h` is a live handle from dlopen and `sym`
                        // is NUL-terminated.
                        let p = unsafe { libc::dlsym(h, sym.as_ptr().cast()) };
                        if p.is_null() {
                            return Err(format!("{} lacks {}", stringify!($lib), stringify!($name)));
                        }
                        // SAFETY: the symbol has the C signature declared
                        // here (copied from the Ceph 16 headers).
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(p) }
                    },)*
                })
            }
        }
    };
}

api! {
    rados::rados_create2: fn(*mut Rados, *const c_char, *const c_char, u64) -> c_int;
    rados::rados_conf_read_file: fn(Rados, *const c_char) -> c_int;
    rados::rados_conf_set: fn(Rados, *const c_char, *const c_char) -> c_int;
    rados::rados_connect: fn(Rados) -> c_int;
    rados::rados_shutdown: fn(Rados);
    rados::rados_ioctx_create: fn(Rados, *const c_char, *mut IoCtx) -> c_int;
    rados::rados_ioctx_destroy: fn(IoCtx);
    rados::rados_ioctx_get_id: fn(IoCtx) -> i64;
    rados::rados_cluster_fsid: fn(Rados, *mut c_char, usize) -> c_int;
    rados::rados_read: fn(IoCtx, *const c_char, *mut c_char, usize, u64) -> c_int;
    rados::rados_get_last_version: fn(IoCtx) -> u64;
    rados::rados_create_write_op: fn() -> WriteOp;
    rados::rados_release_write_op: fn(WriteOp);
    rados::rados_write_op_create: fn(WriteOp, c_int, *const c_char);
    rados::rados_write_op_assert_version: fn(WriteOp, u64);
    rados::rados_write_op_write_full: fn(WriteOp, *const c_char, usize);
    rados::rados_write_op_operate: fn(WriteOp, IoCtx, *const c_char, *mut libc::time_t, c_int) -> c_int;
    rados::rados_watch2: fn(IoCtx, *const c_char, *mut u64, WatchCb, WatchErrCb, *mut c_void) -> c_int;
    rados::rados_unwatch2: fn(IoCtx, u64) -> c_int;
    rados::rados_watch_flush: fn(Rados) -> c_int;
    rados::rados_notify2: fn(IoCtx, *const c_char, *const c_char, c_int, u64, *mut *mut c_char, *mut usize) -> c_int;
    rados::rados_notify_ack: fn(IoCtx, *const c_char, u64, u64, *const c_char, c_int) -> c_int;
    rados::rados_buffer_free: fn(*mut c_char);
    rados::rados_getaddrs: fn(Rados, *mut *mut c_char) -> c_int;
    rados::rados_setxattr: fn(IoCtx, *const c_char, *const c_char, *const c_char, usize) -> c_int;
    rados::rados_rmxattr: fn(IoCtx, *const c_char, *const c_char) -> c_int;
    rados::rados_getxattrs: fn(IoCtx, *const c_char, *mut XattrIter) -> c_int;
    rados::rados_getxattrs_next: fn(XattrIter, *mut *const c_char, *mut *const c_char, *mut usize) -> c_int;
    rados::rados_getxattrs_end: fn(XattrIter);
    rbd::rbd_lock_get_owners: fn(Image, *mut c_int, *mut *mut c_char, *mut usize) -> c_int;
    rbd::rbd_lock_get_owners_cleanup: fn(*mut *mut c_char, usize);
    rbd::rbd_lock_break: fn(Image, c_int, *const c_char) -> c_int;
    rbd::rbd_lock_acquire: fn(Image, c_int) -> c_int;
    rbd::rbd_lock_release: fn(Image) -> c_int;
    rbd::rbd_open: fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd::rbd_open_read_only: fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd::rbd_close: fn(Image) -> c_int;
    rbd::rbd_config_image_list: fn(Image, *mut ConfigOption, *mut c_int) -> c_int;
    rbd::rbd_config_image_list_cleanup: fn(*mut ConfigOption, c_int);
    rbd::rbd_get_size: fn(Image, *mut u64) -> c_int;
    rbd::rbd_get_id: fn(Image, *mut c_char, usize) -> c_int;
    rbd::rbd_read: fn(Image, u64, usize, *mut c_char) -> isize;
    rbd::rbd_write: fn(Image, u64, usize, *const c_char) -> isize;
    rbd::rbd_flush: fn(Image) -> c_int;
    rbd::rbd_discard: fn(Image, u64, u64) -> c_int;
    rbd::rbd_diff_iterate2: fn(Image, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void) -> c_int;
    rbd::rbd_aio_create_completion: fn(*mut c_void, Callback, *mut Completion) -> c_int;
    rbd::rbd_aio_get_return_value: fn(Completion) -> isize;
    rbd::rbd_aio_release: fn(Completion);
    rbd::rbd_aio_read: fn(Image, u64, usize, *mut c_char, Completion) -> c_int;
    rbd::rbd_aio_write: fn(Image, u64, usize, *const c_char, Completion) -> c_int;
    rbd::rbd_aio_flush: fn(Image, Completion) -> c_int;
    rbd::rbd_aio_discard: fn(Image, u64, u64, Completion) -> c_int;
    rbd::rbd_aio_writesame: fn(Image, u64, usize, *const c_char, usize, Completion, c_int) -> c_int;
    rbd::rbd_aio_write_zeroes: fn(Image, u64, usize, Completion, c_int, c_int) -> c_int;
    rbd::rbd_aio_compare_and_write: fn(Image, u64, usize, *const c_char, *const c_char, Completion, *mut u64, c_int) -> isize;
}

fn open_lib(names: &[&CStr]) -> Result<*mut c_void, String> {
    for n in names {
        // SAFETY: a NUL-terminated library name; the handle is kept for
        // the process's life (never dlclose'd: librbd's threads outlive
        // any one image).
        let h = unsafe { libc::dlopen(n.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !h.is_null() {
            return Ok(h);
        }
    }
    Err(format!(
        "cannot load {} (install Debian's librbd1)",
        names[0].to_string_lossy()
    ))
}

/// librados and librbd, loaded on first use; an error says what is missing.
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        let rados = open_lib(&[c"librados.so.2", c"librados.so"])?;
        let rbd = open_lib(&[c"librbd.so.1", c"librbd.so"])?;
        Api::load(rados, rbd)
    })
    .as_ref()
    .map_err(Clone::clone)
}
