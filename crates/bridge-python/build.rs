//! Lets the embedded interpreter find libpython at run time without `LD_LIBRARY_PATH`.
//!
//! pyo3 links `libpython3.x.so` from the interpreter it found at build time (`PYO3_PYTHON`,
//! else `python3` on `PATH`). A pyenv or venv Python keeps that library outside the loader's
//! default paths, so this crate's tests and benches get an rpath to it, and the directory is
//! handed to the build scripts of dependents (`DEP_ANGZARR_PYTHON_LIBDIR`, through `links`),
//! so that a binary can add the same rpath to itself (link arguments of a library's build
//! script never reach its dependents).

fn main() {
    let config = pyo3_build_config::get();
    if let (true, Some(lib_dir)) = (config.shared(), config.lib_dir()) {
        // Tests, benches and examples of this package.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        println!("cargo:libdir={lib_dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
