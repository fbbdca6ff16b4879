//! The scripted session of `angzarr serve --demo`: real commands through the real gRPC front
//! door, printed as they happen.

use std::net::SocketAddr;

use angzarr_example_bank::proto::BankCommand;
use angzarr_example_bank::proto::{BankEvent, bank_event::Kind};
use angzarr_example_bank::{command, deposit, open, withdraw};
use angzarr_proto::v1::command_gateway_client::CommandGatewayClient;
use angzarr_proto::v1::event_query_client::EventQueryClient;
use angzarr_proto::v1::{AggregateQuery, CommandBook, EventPage};
use anyhow::Context;
use tonic::transport::Channel;
use uuid::Uuid;

pub(crate) async fn connect(address: &str) -> anyhow::Result<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
        .with_context(|| format!("invalid server address {address}"))?;
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))
}

pub(crate) async fn run(address: SocketAddr) -> anyhow::Result<()> {
    let channel = connect(&format!("http://{address}")).await?;
    let gateway = CommandGatewayClient::new(channel.clone());
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    println!("\n== demo: bank accounts through CommandGateway.Execute at {address}");
    println!("   ada = account {ada}\n   bob = account {bob}\n");

    let steps: [(&str, Uuid, BankCommand); 6] = [
        ("open an account for ada", ada, open("ada")),
        ("open an account for bob", bob, open("bob")),
        ("deposit 100 to ada", ada, deposit(100)),
        ("deposit 50 to bob", bob, deposit(50)),
        ("withdraw 30 from ada", ada, withdraw(30)),
        (
            "withdraw 1000 from bob (more than the balance)",
            bob,
            withdraw(1000),
        ),
    ];
    for (what, root, bank_command) in steps {
        let outcome = gateway.clone().execute(command(root, &bank_command)).await;
        report(what, outcome);
    }

    println!("-- two tellers deposit to ada at the same moment, both having read sequence 3");
    let racing = |amount| {
        let mut book: CommandBook = command(ada, &deposit(amount));
        book.expected_sequence = Some(3);
        let mut client = gateway.clone();
        async move { client.execute(book).await }
    };
    let (first, second) = tokio::join!(racing(10), racing(20));
    let loser = if first.is_err() { 10 } else { 20 };
    report("teller 1 deposits 10", first);
    report("teller 2 deposits 20", second);
    let mut retry = command(ada, &deposit(loser));
    retry.retry_on_conflict = true; // reload and re-decide instead of failing
    report(
        &format!("the losing teller retries {loser} with retry_on_conflict"),
        gateway.clone().execute(retry).await,
    );

    let book = EventQueryClient::new(channel)
        .get_event_book(AggregateQuery {
            domain: "account".into(),
            root: ada.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("-- ada's history, read back with EventQuery.GetEventBook:");
    for page in &book.pages {
        println!("   {}", describe(page));
    }
    // What any gRPC tool can send, knowing only what reflection tells it.
    let open_eve = format!(
        r#"{{"cover":{{"domain":"account","root":"{}"}},"pages":[{{"payload":{{"@type":"{}","open":{{"owner":"eve"}}}}}}]}}"#,
        Uuid::new_v4(),
        angzarr_core::native::type_url::<BankCommand>(),
    );
    println!("\n== demo done. The server keeps serving; reflection describes every type, so");
    println!("   grpcurl needs no .proto files: grpcurl -plaintext {address} list");
    println!("   grpcurl -plaintext -d '{open_eve}' {address} angzarr.v1.CommandGateway/Execute");
    println!("   Ctrl-C stops it cleanly.\n");
    Ok(())
}

fn report(
    what: &str,
    outcome: Result<tonic::Response<angzarr_proto::v1::CommandResponse>, tonic::Status>,
) {
    match outcome {
        Ok(response) => {
            let pages = response
                .into_inner()
                .events
                .map(|book| book.pages)
                .unwrap_or_default();
            let events: Vec<String> = pages.iter().map(describe).collect();
            println!("ok       {what}\n         -> {}", events.join(", "));
        }
        Err(status) => println!(
            "refused  {what}\n         -> {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

/// `#3 Deposited 20`, decoded from the page's payload.
pub(crate) fn describe(page: &EventPage) -> String {
    let event = page
        .payload
        .as_ref()
        .and_then(|payload| payload.to_msg::<BankEvent>().ok());
    let text = match event.and_then(|event| event.kind) {
        Some(Kind::Opened(opened)) => format!("AccountOpened owner={}", opened.owner),
        Some(Kind::Deposited(deposited)) => format!("Deposited {}", deposited.amount),
        Some(Kind::Withdrawn(withdrawn)) => format!("Withdrawn {}", withdrawn.amount),
        None => "(not a bank event)".to_owned(),
    };
    format!("#{} {text}", page.sequence)
}
