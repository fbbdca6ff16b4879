//! `cargo xtask test [--backend NAME]... [--no-services]`: the one test command.
//!
//! 1. Starts the services the selected backends need (`services up`) and passes their
//!    connection variables to the tests. For a whole-workspace run, first installs with pip
//!    the modules of the Python client of the end-to-end tests, when they are not importable.
//! 2. Builds the tests (`cargo test --no-run`, JSON messages) to learn which test executable
//!    is the `conformance` integration test of each backend crate, then runs
//!    `cargo test --all-targets --locked --no-fail-fast` and `cargo test --doc`, streaming
//!    the output to the terminal while capturing it.
//! 3. Checks in the captured output that each backend's conformance suite ran, with
//!    `<suite>::state_machine` passing for each of its suites (`conformance::state_machine`
//!    for most) and no test failed or ignored. A suite that did not run is a failure, never
//!    a skip.
//! 4. Stops the services it started, whatever happened, and prints a line per backend.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, deps, display, services};

/// A store adapter or a client-logic bridge whose crate runs a conformance suite in
/// `tests/conformance.rs` (the store suite, or the cross-language bridge suite).
pub(crate) struct Backend {
    /// The name used by `--backend`.
    pub(crate) name: &'static str,
    /// The adapter crate.
    pub(crate) package: &'static str,
    /// The services (names in `services::SERVICES`) its tests need.
    pub(crate) services: &'static [&'static str],
    /// The modules its `tests/conformance.rs` runs the suite in: `conformance` for a plain
    /// `store_suite!(harness)`, the names given to `store_suite!(name, harness)` for a suite
    /// run several times (say, against a single server and against a cluster). Each one's
    /// `state_machine` must pass.
    pub(crate) suites: &'static [&'static str],
    /// The property of each suite that must be among the passing tests.
    pub(crate) property: &'static str,
    /// What must be built or installed before its tests run (not a server): answers the
    /// variables that tell the tests where it is.
    pub(crate) prepare: Option<Prepare>,
}

/// Builds or installs what a backend's tests need, and answers the variables that say where.
pub(crate) type Prepare = fn() -> Result<Vec<(&'static str, String)>>;

const STORE_PROPERTY: &str = "state_machine";
const BRIDGE_PROPERTY: &str = "bank_matches_native";

/// Every backend whose conformance suite must run and pass.
pub(crate) const BACKENDS: &[Backend] = &[
    Backend {
        name: "memory",
        package: "angzarr-store-memory",
        services: &[],
        suites: &["conformance"],
        property: STORE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "sqlite",
        package: "angzarr-store-sqlite",
        services: &[],
        suites: &["conformance"],
        property: STORE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "postgres",
        package: "angzarr-store-postgres",
        services: &["postgres"],
        suites: &["conformance"],
        property: STORE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "redis",
        package: "angzarr-store-redis",
        services: &["redis", "redis-cluster"],
        suites: &["single", "cluster"],
        property: STORE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "dynamodb",
        package: "angzarr-store-dynamodb",
        services: &["dynamodb"],
        suites: &["conformance"],
        property: STORE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "bigtable",
        package: "angzarr-store-bigtable",
        services: &["bigtable"],
        suites: &["conformance"],
        property: STORE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "spanner",
        package: "angzarr-store-spanner",
        services: &["spanner"],
        suites: &["conformance"],
        property: STORE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "bridge-grpc",
        package: "angzarr-bridge-grpc",
        services: &[],
        suites: &["unix::bridge_conformance", "tcp::bridge_conformance"],
        property: BRIDGE_PROPERTY,
        prepare: None,
    },
    Backend {
        name: "bridge-python",
        package: "angzarr-bridge-python",
        services: &[],
        // In-process, and the same Python served out of process through the gRPC bridge.
        suites: &["bridge_conformance", "grpc::bridge_conformance"],
        property: BRIDGE_PROPERTY,
        prepare: Some(crate::python::prepare),
    },
    Backend {
        name: "bridge-go",
        package: "angzarr-bridge-go",
        services: &[],
        suites: &["bridge_conformance"],
        property: BRIDGE_PROPERTY,
        prepare: Some(crate::go::prepare_for_tests),
    },
];

/// What the Python client of `crates/angzarr/tests/foreign_client.rs` needs, relative to the
/// project root.
const PYTHON_REQUIREMENTS: &str = "crates/angzarr/tests/python/requirements.txt";
/// The variable that tells that test which Python to run (the project's virtualenv's).
const PYTHON_VARIABLE: &str = "ANGZARR_TEST_PYTHON";

/// The name of the integration test target of the suite (`tests/conformance.rs`).
const SUITE_TARGET: &str = "conformance";

struct Options {
    backends: Vec<&'static Backend>,
    /// Whether `--backend` narrowed the run to some backend crates.
    filtered: bool,
    services: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut backends = Vec::new();
    let mut services = true;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let name = match arg.as_str() {
            "--no-services" => {
                services = false;
                continue;
            }
            "--backend" => args.next().context("--backend needs a backend name")?,
            "--help" | "-h" => {
                crate::print_usage();
                std::process::exit(0);
            }
            other => match other.strip_prefix("--backend=") {
                Some(name) => name,
                None => bail!("unknown argument `{other}` for `test` (see `cargo xtask --help`)"),
            },
        };
        let backend = BACKENDS.iter().find(|b| b.name == name).with_context(|| {
            let known: Vec<_> = BACKENDS.iter().map(|b| b.name).collect();
            format!("unknown backend `{name}`; known: {}", known.join(", "))
        })?;
        if !backends.iter().any(|b: &&Backend| b.name == backend.name) {
            backends.push(backend);
        }
    }
    let filtered = !backends.is_empty();
    if !filtered {
        backends = BACKENDS.iter().collect();
    }
    Ok(Options {
        backends,
        filtered,
        services,
    })
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let python = if options.filtered {
        None
    } else {
        python_client()?
    };
    // Before any server starts, so that a failure here leaves nothing running.
    let mut prepared = Vec::new();
    for backend in &options.backends {
        if let Some(prepare) = backend.prepare {
            prepared
                .extend(prepare().with_context(|| format!("could not prepare {}", backend.name))?);
        }
    }
    let mut provisioned = if options.services {
        let names: Vec<&str> = options.backends.iter().map(|b| b.name).collect();
        services::up(&services::for_backends(&names)?)?
    } else {
        services::Provisioned::default()
    };
    provisioned.env.extend(python);
    provisioned.env.extend(prepared);

    let result = run_tests(&options, &provisioned.env);

    let stopped = services::stop_started(&provisioned);
    match (result, stopped) {
        (Err(error), Err(stop_error)) => {
            eprintln!("xtask test: {stop_error:#}");
            Err(error)
        }
        (result, stopped) => result.and(stopped),
    }
}

/// Installs the Python client's modules into the project's virtualenv, and answers the
/// variable that hands its interpreter to the test. Without python3 there is nothing to
/// install with: the test then fails, saying what to install.
fn python_client() -> Result<Option<(&'static str, String)>> {
    match services::venv_install("python-client", &["-r", PYTHON_REQUIREMENTS]) {
        Ok(python) => Ok(Some((PYTHON_VARIABLE, python.display().to_string()))),
        Err(error) if Command::new("python3").arg("--version").output().is_err() => {
            eprintln!(
                "xtask test: python3 cannot be run ({error:#}); the Python client test will fail"
            );
            Ok(None)
        }
        Err(error) => Err(error.context("could not prepare the Python client's modules")),
    }
}

fn run_tests(options: &Options, env: &[(&'static str, String)]) -> Result<()> {
    let scope: Vec<String> = if options.filtered {
        options
            .backends
            .iter()
            .flat_map(|b| ["--package".to_owned(), b.package.to_owned()])
            .collect()
    } else {
        vec![
            "--workspace".to_owned(),
            "--features".to_owned(),
            crate::OPTIONAL_FEATURES.to_owned(),
        ]
    };
    let cargo_test = || {
        let mut command = cargo();
        command.arg("test").args(&scope).arg("--locked");
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command
    };

    // Which test executables are the conformance suites, per package.
    let mut build = cargo_test();
    build.args([
        "--all-targets",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let suites = match suite_executables(build) {
        Ok(suites) => suites,
        Err(error) => {
            for backend in &options.backends {
                eprintln!(
                    "xtask test: conformance {} ({}): FAILED: did not run, the tests did not build",
                    backend.name, backend.package
                );
            }
            return Err(error);
        }
    };

    let mut steps = Vec::new();
    let mut output = String::new();
    let color = std::io::stdout().is_terminal().then_some("--color=always");
    for (step, extra) in [
        (
            "cargo test --all-targets",
            ["--all-targets", "--no-fail-fast"],
        ),
        ("cargo test --doc", ["--doc", "--no-fail-fast"]),
    ] {
        let mut command = cargo_test();
        command.args(extra).args(color);
        let (status, text) = run_tee(command)?;
        output.push_str(&text);
        steps.push((step, status));
    }

    let sections = sections(&strip_ansi(&output));
    let mut failures = Vec::new();
    eprintln!();
    for (step, status) in &steps {
        let outcome = if status.success() {
            "ok".to_owned()
        } else {
            format!("FAILED ({status})")
        };
        eprintln!("xtask test: {step}: {outcome}");
        if !status.success() {
            failures.push(format!("`{step}` failed"));
        }
    }
    for backend in &options.backends {
        let executables = suites.get(backend.package).cloned().unwrap_or_default();
        match verify(backend, &executables, &sections) {
            Ok(passed) => eprintln!(
                "xtask test: conformance {} ({}): ok, {passed} properties passed",
                backend.name, backend.package
            ),
            Err(reason) => {
                eprintln!(
                    "xtask test: conformance {} ({}): FAILED: {reason}",
                    backend.name, backend.package
                );
                failures.push(format!(
                    "conformance suite of backend `{}` {reason}",
                    backend.name
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

/// Builds the tests and returns, per package name, the file names of its `conformance`
/// integration test executables.
fn suite_executables(mut build: Command) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let shown = display(&build);
    eprintln!("$ {shown}");
    let output = build
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not run `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "building the tests failed (`{shown}`: {}); no test ran",
            output.status
        );
    }
    let names: BTreeMap<_, _> = deps::workspace_packages()?
        .into_iter()
        .map(|p| (p.manifest_path, p.name))
        .collect();
    let mut suites: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let target = &message["target"];
        let is_suite = message["reason"] == "compiler-artifact"
            && target["name"] == SUITE_TARGET
            && target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
        let (true, Some(executable), Some(manifest)) = (
            is_suite,
            message["executable"].as_str(),
            message["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let package = names
            .get(Path::new(manifest))
            .with_context(|| format!("no workspace package has the manifest {manifest}"))?;
        let file_name = Path::new(executable)
            .file_name()
            .with_context(|| format!("test executable without a file name: {executable}"))?;
        suites
            .entry(package.clone())
            .or_default()
            .insert(file_name.to_string_lossy().into_owned());
    }
    Ok(suites)
}

/// Runs a command with stdout and stderr on one pipe (so their order is kept), copying
/// everything to our stdout as it comes and returning it too.
fn run_tee(mut command: Command) -> Result<(ExitStatus, String)> {
    let shown = display(&command);
    eprintln!("$ {shown}");
    let (mut reader, writer) = std::io::pipe().context("could not create a pipe")?;
    command
        .stdout(writer.try_clone().context("could not duplicate a pipe")?)
        .stderr(writer);
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    // The Command holds the write ends: close them, or the read below never ends.
    drop(command);

    let mut captured = Vec::new();
    let mut buffer = [0; 8192];
    let mut stdout = std::io::stdout();
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error).context("could not read the output of cargo"),
        };
        captured.extend_from_slice(&buffer[..read]);
        // A closed stdout (`| head`) must not stop the run or the capture.
        let _ = stdout
            .write_all(&buffer[..read])
            .and_then(|()| stdout.flush());
    }
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{shown}`"))?;
    Ok((status, String::from_utf8_lossy(&captured).into_owned()))
}

/// Removes the ANSI escape sequences of colored output.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The output of one test executable, between `Running ...` and the next section.
#[derive(Debug, Default)]
struct Section {
    /// The file name of the executable (`conformance-0123abcd`); empty for doc tests.
    executable: String,
    /// (test name, outcome) of each `test <name> ... <outcome>` line.
    tests: Vec<(String, String)>,
    /// The counts of the `test result:` line: passed, failed, ignored.
    result: Option<(u64, u64, u64)>,
}

fn sections(output: &str) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut current: Option<Section> = None;
    for line in output.lines() {
        let line = line.trim();
        if let Some(running) = line.strip_prefix("Running ") {
            // `Running tests/conformance.rs (target/debug/deps/conformance-0123abcd)`
            let path = match (running.rfind('('), running.strip_suffix(')')) {
                (Some(open), Some(_)) => &running[open + 1..running.len() - 1],
                _ => running,
            };
            let executable = Path::new(path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            sections.extend(current.replace(Section {
                executable,
                ..Section::default()
            }));
        } else if line.starts_with("Doc-tests ") {
            sections.extend(current.replace(Section::default()));
        } else if let Some(section) = current.as_mut() {
            if let Some(result) = line.strip_prefix("test result: ") {
                section.result = Some(counts(result));
            } else if let Some((name, outcome)) = line
                .strip_prefix("test ")
                .and_then(|t| t.split_once(" ... "))
            {
                section
                    .tests
                    .push((name.to_owned(), outcome.trim().to_owned()));
            }
        }
    }
    sections.extend(current);
    sections
}

/// `ok. 7 passed; 0 failed; 1 ignored; 0 measured; ...` → (7, 0, 1).
fn counts(result: &str) -> (u64, u64, u64) {
    let mut counts = (0, 0, 0);
    for part in result.split(['.', ';']) {
        let mut words = part.split_whitespace();
        let (Some(number), Some(word)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse() else {
            continue;
        };
        match word {
            "passed" => counts.0 = number,
            "failed" => counts.1 = number,
            "ignored" => counts.2 = number,
            _ => {}
        }
    }
    counts
}

/// Whether the suite of `backend` ran and passed; the number of passed tests if so.
fn verify(
    backend: &Backend,
    executables: &BTreeSet<String>,
    sections: &[Section],
) -> Result<u64, String> {
    if executables.is_empty() {
        return Err(format!(
            "did not run: {} has no `{SUITE_TARGET}` integration test \
             (tests/{SUITE_TARGET}.rs calling angzarr_conformance::store_suite!)",
            backend.package
        ));
    }
    let ran: Vec<&Section> = sections
        .iter()
        .filter(|s| executables.contains(&s.executable))
        .collect();
    let [section] = ran.as_slice() else {
        return Err(if ran.is_empty() {
            format!(
                "did not run: no `Running tests/{SUITE_TARGET}.rs` section for {} in the \
                 cargo test output (a build or earlier failure stopped cargo?)",
                backend.package
            )
        } else {
            format!("ran {} times, expected once", ran.len())
        });
    };
    let Some((passed, failed, ignored)) = section.result else {
        return Err("started but printed no `test result:` line (crashed?)".to_owned());
    };
    let failing: Vec<&str> = section
        .tests
        .iter()
        .filter(|(_, outcome)| outcome != "ok")
        .map(|(name, _)| name.as_str())
        .collect();
    if failed > 0 || ignored > 0 {
        return Err(format!(
            "{failed} failed, {ignored} ignored (must be 0): {}",
            failing.join(", ")
        ));
    }
    for suite in backend.suites {
        let required = format!("{suite}::{}", backend.property);
        if !section
            .tests
            .iter()
            .any(|(name, outcome)| *name == required && outcome == "ok")
        {
            return Err(format!(
                "`test {required} ... ok` is missing from its output"
            ));
        }
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
   Compiling angzarr-store-memory v0.1.0
     Running unittests src/lib.rs (target/debug/deps/angzarr_store_memory-aaaa)

running 1 test
test tests::it_works ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/conformance.rs (target/debug/deps/conformance-1111)

running 2 tests
test conformance::domain_names ... ok
test conformance::state_machine ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s

     Running tests/conformance.rs (/tmp/target/debug/deps/conformance-2222)

running 2 tests
test conformance::domain_names ... ignored, slow
test conformance::state_machine ... FAILED

failures:

---- conformance::state_machine stdout ----
test result: this line is test output, not a result
thread 'conformance::state_machine' panicked

failures:
    conformance::state_machine

test result: FAILED. 0 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.10s

   Doc-tests angzarr_store_memory

running 1 test
test crates/store-memory/src/lib.rs - (line 3) ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
";

    fn backend(name: &'static str) -> Backend {
        Backend {
            name,
            package: "angzarr-store-x",
            services: &[],
            suites: &["conformance"],
            property: STORE_PROPERTY,
            prepare: None,
        }
    }

    fn executables(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn sections_are_split_per_executable() {
        let sections = sections(OUTPUT);
        let names: Vec<&str> = sections.iter().map(|s| s.executable.as_str()).collect();
        assert_eq!(
            names,
            [
                "angzarr_store_memory-aaaa",
                "conformance-1111",
                "conformance-2222",
                ""
            ]
        );
        assert_eq!(sections[1].result, Some((2, 0, 0)));
        assert_eq!(sections[2].result, Some((0, 1, 1)));
    }

    #[test]
    fn a_passing_suite_is_accepted() {
        let sections = sections(OUTPUT);
        let result = verify(
            &backend("memory"),
            &executables(&["conformance-1111"]),
            &sections,
        );
        assert_eq!(result, Ok(2));
    }

    #[test]
    fn failed_missing_and_absent_suites_are_rejected() {
        let sections = sections(OUTPUT);
        let failed = verify(
            &backend("a"),
            &executables(&["conformance-2222"]),
            &sections,
        );
        assert!(failed.unwrap_err().starts_with("1 failed, 1 ignored"));
        let not_run = verify(
            &backend("b"),
            &executables(&["conformance-3333"]),
            &sections,
        );
        assert!(not_run.unwrap_err().starts_with("did not run: no `Running"));
        let no_target = verify(&backend("c"), &executables(&[]), &sections);
        assert!(
            no_target
                .unwrap_err()
                .contains("has no `conformance` integration test")
        );
    }

    #[test]
    fn a_suite_without_the_state_machine_is_rejected() {
        let output = OUTPUT.replace(
            "conformance::state_machine ... ok",
            "conformance::other ... ok",
        );
        let sections = sections(&output);
        let result = verify(
            &backend("memory"),
            &executables(&["conformance-1111"]),
            &sections,
        );
        assert!(
            result
                .unwrap_err()
                .contains("state_machine ... ok` is missing")
        );
    }

    #[test]
    fn every_named_suite_must_pass_its_state_machine() {
        let two = Backend {
            suites: &["single", "cluster"],
            ..backend("redis")
        };
        let output = OUTPUT.replace(
            "test conformance::state_machine ... ok",
            "test single::state_machine ... ok\ntest cluster::state_machine ... ok",
        );
        let ran = verify(
            &two,
            &executables(&["conformance-1111"]),
            &sections(&output),
        );
        assert_eq!(ran, Ok(2));
        // The cluster suite did not run: `single` alone is not enough.
        let output = OUTPUT.replace(
            "test conformance::state_machine ... ok",
            "test single::state_machine ... ok",
        );
        let one = verify(
            &two,
            &executables(&["conformance-1111"]),
            &sections(&output),
        );
        assert!(
            one.unwrap_err()
                .contains("`test cluster::state_machine ... ok` is missing")
        );
    }

    #[test]
    fn ansi_colors_are_stripped() {
        let colored =
            "\u{1b}[1m\u{1b}[92m     Running\u{1b}[0m tests/conformance.rs (x/conformance-1)";
        assert_eq!(
            strip_ansi(colored),
            "     Running tests/conformance.rs (x/conformance-1)"
        );
    }
}
