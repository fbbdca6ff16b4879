//! The C ABI of an angzarr Go library: the only `unsafe` code of the crate.
//!
//! ```c
//! uint32_t angzarr_abi_version(void);
//! int32_t  angzarr_handle(uint64_t snapshot_every,
//!                         const uint8_t *command, size_t command_len,
//!                         uint8_t **out, size_t *out_len);
//! void     angzarr_free(void *buffer);
//! ```
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

use libloading::Library;

use crate::LoadError;

/// The version of the ABI this crate speaks; a library exporting another is refused at load.
pub const ABI_VERSION: u32 = 1;

type AbiVersionFn = unsafe extern "C" fn() -> u32;
type HandleFn = unsafe extern "C" fn(
    snapshot_every: u64,
    command: *const u8,
    command_len: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> i32;
type FreeFn = unsafe extern "C" fn(buffer: *mut u8);

/// Why a library was refused, and whether opening it started a Go runtime (which stays).
pub(crate) struct Refusal {
    pub(crate) error: LoadError,
    pub(crate) go_runtime: bool,
}

/// A loaded library and its checked entry points.
pub(crate) struct Abi {
    handle: HandleFn,
    free: FreeFn,
    // Last, and never dropped before the pointers above stop being used: the struct owns both.
    _library: Library,
}

impl Abi {
    /// Loads `path`, resolves the three symbols and checks the ABI version.
    pub(crate) fn open(path: &Path) -> Result<Self, Refusal> {
        let path_buf = || PathBuf::from(path);
        // SAFETY: loading runs the library's initialisers: for a Go library, the Go runtime's
        // start and the packages' init functions. Running the operator's chosen library is the
        // point of this crate (the trust boundary of all in-process logic); a library that is
        // not an angzarr one is detected below, before any of its functions is called.
        let library = unsafe { Library::new(path.as_os_str()) }.map_err(|error| Refusal {
            error: LoadError::Open {
                path: path_buf(),
                message: describe(&error),
            },
            go_runtime: false,
        })?;
        // Every cgo library exports it: its Go runtime started when it was opened, and stays
        // (Go libraries cannot be unloaded), refused or not.
        // SAFETY: only the symbol's presence is read; nothing is called or dereferenced.
        let go_runtime =
            unsafe { library.get::<*const ()>(b"_cgo_get_context_function\0") }.is_ok();
        let refuse = |error| Refusal { error, go_runtime };
        let missing = |symbol: &'static str| {
            move |error: libloading::Error| LoadError::MissingSymbol {
                path: path_buf(),
                symbol,
                message: describe(&error),
            }
        };
        // SAFETY: `AbiVersionFn` is the signature the ABI declares for this name, unchanged
        // across versions so that the version itself can always be read.
        let version: AbiVersionFn =
            *unsafe { library.get::<AbiVersionFn>(b"angzarr_abi_version\0") }
                .map_err(missing("angzarr_abi_version"))
                .map_err(refuse)?;
        // SAFETY: a function taking no arguments and returning a u32, per the ABI.
        let found = unsafe { version() };
        if found != ABI_VERSION {
            return Err(refuse(LoadError::AbiVersion {
                path: path_buf(),
                found,
                expected: ABI_VERSION,
            }));
        }
        // SAFETY: the signatures of ABI version 1, which the library has just declared it speaks.
        let handle: HandleFn = *unsafe { library.get::<HandleFn>(b"angzarr_handle\0") }
            .map_err(missing("angzarr_handle"))
            .map_err(refuse)?;
        // SAFETY: as above.
        let free: FreeFn = *unsafe { library.get::<FreeFn>(b"angzarr_free\0") }
            .map_err(missing("angzarr_free"))
            .map_err(refuse)?;
        Ok(Self {
            handle,
            free,
            _library: library,
        })
    }

    /// Calls `angzarr_handle` and hands its status and output buffer to `read` before the
    /// buffer is freed (so that a reply is decoded in place, not copied first).
    pub(crate) fn call<R>(
        &self,
        snapshot_every: u64,
        command: &[u8],
        read: impl FnOnce(i32, &[u8]) -> R,
    ) -> R {
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut out_len: usize = 0;
        // An empty slice's pointer is a placeholder (0x1), which Go's stack copier rejects as
        // an invalid pointer should it sit in a growing goroutine stack: null instead.
        let input = if command.is_empty() {
            std::ptr::null()
        } else {
            command.as_ptr()
        };
        // SAFETY: `input` is null with a length of 0, or valid for reads of `command.len()`
        // bytes for the whole call; the library keeps no reference to it afterwards (ABI
        // contract); `out` and `out_len` are valid for writes. The library's functions are safe to call from any thread,
        // concurrently (cgo gives each calling thread its own Go context).
        let status =
            unsafe { (self.handle)(snapshot_every, input, command.len(), &mut out, &mut out_len) };
        if out.is_null() {
            return read(status, &[]);
        }
        // Frees the buffer even if `read` panics.
        struct Buffer<'a>(&'a Abi, *mut u8);
        impl Drop for Buffer<'_> {
            fn drop(&mut self) {
                // SAFETY: the pointer was returned by this library's `angzarr_handle`, and is
                // freed once, here, by the library's own deallocator.
                unsafe { (self.0.free)(self.1) }
            }
        }
        let buffer = Buffer(self, out);
        // SAFETY: the library returned `out_len` initialised bytes at `out`, which it does not
        // touch again; they stay valid until `buffer` is dropped, after this borrow ends.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.1, out_len) };
        read(status, bytes)
    }
}

/// The loader's error with its causes (libloading's own text is only "dlopen failed").
fn describe(error: &libloading::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
