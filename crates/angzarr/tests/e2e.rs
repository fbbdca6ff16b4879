//! End to end: the real `angzarr` binary as a separate process on a free port, driven only
//! through gRPC.

use std::time::Duration;

use angzarr_example_bank::{command, deposit, open, withdraw};
use angzarr_proto::v1::event_query_client::EventQueryClient;
use angzarr_proto::v1::{
    AggregateQuery, CommandBook, CommandResponse, CorrelationQuery, EventPage, ListDomainsRequest,
    ListRootsRequest,
};
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

mod common;

use common::{Server, angzarr};

async fn history(server: &Server, root: Uuid) -> Vec<EventPage> {
    let query = AggregateQuery {
        domain: "account".into(),
        root: root.to_string(),
        ..Default::default()
    };
    server
        .query()
        .await
        .get_event_book(query)
        .await
        .unwrap()
        .into_inner()
        .pages
}

async fn domains(query: &mut EventQueryClient<Channel>) -> Vec<String> {
    query
        .list_domains(ListDomainsRequest {})
        .await
        .unwrap()
        .into_inner()
        .domains
}

fn balance(pages: &[EventPage]) -> u64 {
    angzarr_example_bank::replay(None, pages).unwrap().balance
}

fn assert_gapless(pages: &[EventPage]) {
    let sequences: Vec<u64> = pages.iter().map(|page| page.sequence).collect();
    assert_eq!(
        sequences,
        (0..pages.len() as u64).collect::<Vec<_>>(),
        "the stream has a gap or a duplicate"
    );
}

#[tokio::test]
async fn commands_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut gateway = server.gateway().await;
    let roots: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for root in &roots {
        gateway.execute(command(*root, &open("ada"))).await.unwrap();
    }
    let mut book = command(roots[0], &deposit(70));
    book.cover.as_mut().unwrap().correlation_id = "transfer-9".into();
    let response = gateway.execute(book).await.unwrap().into_inner();
    let pages = response.events.unwrap().pages;
    assert_eq!(
        (
            pages.len(),
            pages[0].sequence,
            pages[0].correlation_id.as_str()
        ),
        (1, 1, "transfer-9")
    );

    let stored = history(&server, roots[0]).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[1], pages[0],
        "what the gateway answered is what was stored"
    );
    let mut query = server.query().await;
    let range = AggregateQuery {
        domain: "account".into(),
        root: roots[0].to_string(),
        from_sequence: 1,
        ..Default::default()
    };
    let mut stream = query.stream_events(range).await.unwrap().into_inner();
    let mut streamed = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        streamed.push(page);
    }
    assert_eq!(streamed, stored[1..]);

    let mut all_roots = Vec::new();
    let mut after = String::new();
    loop {
        let request = ListRootsRequest {
            domain: "account".into(),
            after: after.clone(),
            limit: 2,
        };
        let page = query.list_roots(request).await.unwrap().into_inner().roots;
        let Some(last) = page.last() else { break };
        after = last.clone();
        all_roots.extend(page);
    }
    let mut expected: Vec<String> = roots.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(all_roots, expected);
    assert_eq!(domains(&mut query).await, ["account"]);
    let correlated = query.find_by_correlation(CorrelationQuery {
        correlation_id: "transfer-9".into(),
    });
    let mut correlated = correlated.await.unwrap().into_inner();
    let found = correlated.message().await.unwrap().unwrap();
    assert_eq!(
        (found.cover.unwrap().root, found.pages),
        (roots[0].to_string(), pages)
    );
    assert!(correlated.message().await.unwrap().is_none());
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ANGZARR_LIMITS_MAX_EVENT_BYTES", "300"),
        ("ANGZARR_SERVER_MAX_MESSAGE_BYTES", "4096"),
    ];
    let server = Server::start(dir.path(), &env);
    let mut gateway = server.gateway().await;
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    let edited = |edit: fn(&mut CommandBook)| {
        let mut book = command(root, &deposit(5));
        edit(&mut book);
        book
    };
    let cases: Vec<(&str, CommandBook, Code)> = vec![
        (
            "no cover",
            edited(|book| book.cover = None),
            Code::InvalidArgument,
        ),
        (
            "a domain with a key separator",
            edited(|book| book.cover.as_mut().unwrap().domain = "account:1".into()),
            Code::InvalidArgument,
        ),
        (
            "a nil root",
            edited(|book| book.cover.as_mut().unwrap().root = Uuid::nil().to_string()),
            Code::InvalidArgument,
        ),
        (
            "no pages",
            edited(|book| book.pages.clear()),
            Code::InvalidArgument,
        ),
        (
            "an unknown payload type",
            edited(|book| book.pages[0].payload.as_mut().unwrap().type_url = "x/Y".into()),
            Code::InvalidArgument,
        ),
        (
            "an unknown domain",
            edited(|book| book.cover.as_mut().unwrap().domain = "ledger".into()),
            Code::NotFound,
        ),
        (
            "an overdraft",
            command(root, &withdraw(1)),
            Code::FailedPrecondition,
        ),
        (
            "a stale expected sequence",
            edited(|book| book.expected_sequence = Some(0)),
            Code::Aborted,
        ),
        (
            "an event over the size limit",
            command(Uuid::new_v4(), &open(&"x".repeat(400))),
            Code::ResourceExhausted,
        ),
        (
            "a message over the size limit",
            command(Uuid::new_v4(), &open(&"x".repeat(5000))),
            Code::ResourceExhausted,
        ),
    ];
    for (what, book, code) in cases {
        let status = gateway.execute(book).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(
            !status.message().is_empty(),
            "{what}: the status says what to fix"
        );
    }
    assert_eq!(history(&server, root).await.len(), 1, "nothing was written");
    let mut query = server.query().await;
    let bad = AggregateQuery {
        domain: "account".into(),
        root: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        query.get_event_book(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(domains(&mut query).await, ["account"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let shared = Uuid::new_v4();
    server
        .gateway()
        .await
        .execute(command(shared, &open("shared")))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for client in 0..48 {
        let gateway = server.gateway().await;
        tasks.push(tokio::spawn(async move {
            let mut gateway = gateway;
            // Half the clients share one account; the others each have their own.
            let own = Uuid::new_v4();
            let root = if client % 2 == 0 { shared } else { own };
            if root == own {
                gateway.execute(command(own, &open("own"))).await.unwrap();
            }
            for _ in 0..10 {
                let mut book = command(root, &deposit(1));
                book.retry_on_conflict = true;
                book.request_id = Uuid::new_v4().to_string();
                gateway.execute(book).await.unwrap();
            }
            root
        }));
    }
    let mut own_roots = Vec::new();
    for task in tasks {
        let root = task.await.unwrap();
        if root != shared {
            own_roots.push(root);
        }
    }
    let pages = history(&server, shared).await;
    assert_gapless(&pages);
    assert_eq!((pages.len(), balance(&pages)), (1 + 24 * 10, 240));
    for root in own_roots {
        let pages = history(&server, root).await;
        assert_gapless(&pages);
        assert_eq!((pages.len(), balance(&pages)), (11, 10));
    }
}

/// Commands of three deposits each, from several clients, until the server is killed.
/// Returns every acknowledged response.
async fn load_until_killed(server: &Server, roots: &[Uuid]) -> Vec<CommandResponse> {
    let mut tasks = Vec::new();
    for root in roots {
        let (mut gateway, root) = (server.gateway().await, *root);
        gateway
            .execute(command(root, &open("crash")))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            loop {
                let mut book = command(root, &deposit(1));
                for _ in 0..2 {
                    book.pages.push(book.pages[0].clone());
                }
                match gateway.execute(book).await {
                    Ok(response) => acknowledged.push(response.into_inner()),
                    Err(_) => return acknowledged, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("KILL");
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_mid_load_loses_no_acknowledged_command_and_leaves_no_partial_batch() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let roots: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let acknowledged = load_until_killed(&server, &roots).await;
    assert!(
        server.wait(Duration::from_secs(5)).code().is_none(),
        "killed by a signal"
    );
    assert!(
        acknowledged.len() > 8,
        "the load got going before the kill ({} acknowledged)",
        acknowledged.len()
    );

    let restarted = Server::start(dir.path(), &[]);
    for root in &roots {
        let pages = history(&restarted, *root).await;
        assert_gapless(&pages);
        assert_eq!(
            (pages.len() - 1) % 3,
            0,
            "{root} has a partial batch: {} events",
            pages.len()
        );
        assert_eq!(balance(&pages), (pages.len() - 1) as u64);
    }
    for response in acknowledged {
        let book = response.events.unwrap();
        let root = Uuid::parse_str(&book.cover.unwrap().root).unwrap();
        let stored = history(&restarted, root).await;
        for page in book.pages {
            assert_eq!(
                stored.get(page.sequence as usize),
                Some(&page),
                "an acknowledged event was lost"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_commands_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let root = Uuid::new_v4();
    let mut gateway = server.gateway().await;
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    let load = tokio::spawn(async move {
        let mut acknowledged = 0;
        while gateway.execute(command(root, &deposit(1))).await.is_ok() {
            acknowledged += 1;
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal("TERM");
    let acknowledged = load.await.unwrap();
    assert!(
        server.wait(Duration::from_secs(15)).success(),
        "a clean exit"
    );
    let restarted = Server::start(dir.path(), &[]);
    let pages = history(&restarted, root).await;
    assert_gapless(&pages);
    assert_eq!(
        pages.len(),
        1 + acknowledged,
        "every acknowledged command, and only those"
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut health = HealthClient::new(server.channel().await);
    for service in ["angzarr.v1.CommandGateway", "angzarr.v1.EventQuery"] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = health.check(request).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for service in ["angzarr.v1.CommandGateway", "angzarr.v1.EventQuery"] {
        assert!(
            names.iter().any(|name| name == service),
            "{service} missing from {names:?}"
        );
    }
}

/// A bridged domain's `descriptor_set` file is served by reflection, so that clients can
/// build its commands; a file that cannot be read stops start-up, naming the domain.
#[tokio::test]
async fn a_bridged_domains_descriptor_set_is_served_by_reflection() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("bank.binpb");
    std::fs::write(&set, angzarr_example_bank::FILE_DESCRIPTOR_SET).unwrap();
    // Logic served by a process that is not there: nothing calls it here.
    let config = |descriptor_set: &std::path::Path| {
        let path = dir.path().join("angzarr.toml");
        let text = format!(
            "[[domains]]\nname = \"account\"\nlogic = \"grpc:unix:{}\"\ndescriptor_set = {:?}\n",
            dir.path().join("absent.sock").display(),
            descriptor_set.display().to_string(),
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };

    let file = config(&set);
    let server = Server::start(dir.path(), &[("ANGZARR_CONFIG", file.as_str())]);
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "examples.bank.v1.Deposit".into(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::FileDescriptorResponse(files)) = response else {
        panic!("the bank's messages are not served: {response:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    drop(server);

    // Sets reflection could not serve: none, an empty one, one without the file it imports.
    use angzarr_proto::prost::Message;
    use angzarr_proto::prost_types::{FileDescriptorProto, FileDescriptorSet};
    let empty = dir.path().join("empty.binpb");
    std::fs::write(&empty, b"").unwrap();
    let unresolved = dir.path().join("unresolved.binpb");
    let importing = FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("orders.proto".into()),
            dependency: vec!["money.proto".into()],
            ..FileDescriptorProto::default()
        }],
    };
    std::fs::write(&unresolved, importing.encode_to_vec()).unwrap();
    for set in [dir.path().join("missing.binpb"), empty, unresolved] {
        let file = config(&set);
        let output = angzarr()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("ANGZARR_CONFIG", &file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "serve started with {}",
            set.display()
        );
        let name = set.file_name().unwrap().to_string_lossy();
        assert!(
            stderr.contains("\"account\"") && stderr.contains(name.as_ref()),
            "{stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("listening"),
            "{} was refused only after the server started",
            set.display()
        );
    }
}

#[test]
fn configuration_errors_name_the_file_and_line_and_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("angzarr.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:1\"\nrequest_timeout_ms = \"soon\"\n",
    )
    .unwrap();
    let output = angzarr()
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("angzarr.toml") && stderr.contains("request_timeout_ms"),
        "{stderr}"
    );

    std::fs::write(&path, "[server\n").unwrap();
    let output = angzarr()
        .arg("--config")
        .arg(&path)
        .args(["config", "--print"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("angzarr.toml") && stderr.contains("line 1"),
        "{stderr}"
    );
}

#[test]
fn config_print_shows_the_effective_configuration() {
    let output = angzarr()
        .args(["config", "--print"])
        .env("ANGZARR_SERVER_REQUEST_TIMEOUT_MS", "1234")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.contains("request_timeout_ms = 1234")
            && stdout.contains("listen = \"127.0.0.1:50051\""),
        "{stdout}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["config", "--help"],
        &["load", "--help"],
    ] {
        let output = angzarr().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}
