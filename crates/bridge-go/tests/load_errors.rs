//! Loading: a library that is not an angzarr Go library, or speaks another ABI version, is a
//! typed error at start-up; one Go library per process. One test, in its own process, since the
//! order matters: the broken libraries (plain C, no Go runtime) are refused before the first
//! Go library is loaded, and a second Go library after it.

mod common;

use std::sync::Arc;

use angzarr_bridge_go::{ABI_VERSION, GoLibrary, GoLogic, LoadError};

#[test]
fn broken_libraries_are_refused_and_one_go_library_is_shared() {
    let missing = std::env::temp_dir().join("angzarr-no-such-library.so");
    let Err(LoadError::Open { path, message }) = GoLogic::load(&missing) else {
        panic!("a missing file must be LoadError::Open");
    };
    assert_eq!(path, missing);
    assert!(message.contains("angzarr-no-such-library.so"), "{message}");

    let broken = common::path("ANGZARR_TEST_GO_MISSING_SYMBOL_LIB");
    let error = GoLibrary::load(&broken)
        .err()
        .expect("a missing symbol must be refused");
    assert!(
        matches!(
            &error,
            LoadError::MissingSymbol {
                symbol: "angzarr_free",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("is not an angzarr Go library"),
        "{error}"
    );

    let wrong = common::path("ANGZARR_TEST_GO_WRONG_ABI_LIB");
    let error = GoLibrary::load(&wrong)
        .err()
        .expect("a wrong ABI version must be refused");
    assert_eq!(
        error,
        LoadError::AbiVersion {
            path: std::fs::canonicalize(&wrong).unwrap(),
            found: 999,
            expected: ABI_VERSION,
        }
    );

    // No library loaded so far: the first Go library loads, the same path is shared...
    let fixture = common::library("ANGZARR_TEST_GO_FIXTURE_LIB");
    let again = GoLogic::load(common::path("ANGZARR_TEST_GO_FIXTURE_LIB")).unwrap();
    assert!(Arc::ptr_eq(&fixture, again.library()));
    // ...and another one is refused before it is opened (a second Go runtime).
    let bank = common::path("ANGZARR_TEST_GO_BANK_LIB");
    let error = GoLibrary::load(&bank)
        .err()
        .expect("a second library must be refused");
    assert_eq!(
        error,
        LoadError::AnotherLibrary {
            loaded: fixture.path().to_owned(),
            requested: std::fs::canonicalize(&bank).unwrap(),
        }
    );
}
