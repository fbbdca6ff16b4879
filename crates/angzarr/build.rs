//! With the `python` feature, gives the binary an rpath to the libpython the Python bridge
//! linked (a pyenv or venv Python keeps it outside the loader's default paths), which the
//! bridge's build script hands over as `DEP_ANGZARR_PYTHON_LIBDIR`.

fn main() {
    if let Ok(lib_dir) = std::env::var("DEP_ANGZARR_PYTHON_LIBDIR") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib_dir}");
        // The binary's own tests start it, and unit tests and benches link the bridge too.
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{lib_dir}");
        println!("cargo:rustc-link-arg-benches=-Wl,-rpath,{lib_dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_ANGZARR_PYTHON_LIBDIR");
}
