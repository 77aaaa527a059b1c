//! Produce with the batching producer and consume with a consumer group.
//!
//! Against a running cluster (`make dev`):
//!
//! ```sh
//! FERROLOG_BROKERS=127.0.0.1:9092 cargo run --example quickstart
//! ```
//!
//! Creates the topic `example-orders` (3 partitions) if it is missing, sends
//! 100 keyed records (idempotent, acks=all, LZ4), then reads them back as a
//! member of the group `example-billing`, committing as it goes.

use std::sync::Arc;
use std::time::Duration;

use ferrolog_client::Client;
use ferrolog_client::Compression;
use ferrolog_client::Consumer;
use ferrolog_client::ConsumerConfig;
use ferrolog_client::ErrorKind;
use ferrolog_client::Event;
use ferrolog_client::OffsetReset;
use ferrolog_client::Producer;
use ferrolog_client::ProducerConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let brokers = std::env::var("FERROLOG_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let client = Arc::new(Client::new(brokers.split(',').map(String::from).collect()));
    match client.create_topic("example-orders", 3, 0).await {
        Ok(_) => println!("created topic example-orders"),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }

    let producer =
        Producer::new(client.clone(), ProducerConfig { compression: Compression::Lz4, ..ProducerConfig::default() })
            .await?;
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let key = format!("customer-{}", i % 7).into_bytes();
        deliveries.push(producer.send("example-orders", Some(key), format!("order {i}").into_bytes(), None).await?);
    }
    producer.flush().await;
    for d in deliveries {
        d.wait().await?;
    }
    println!("produced 100 records");

    let config = ConsumerConfig { offset_reset: OffsetReset::Earliest, ..ConsumerConfig::default() };
    let mut consumer = Consumer::subscribe(client.clone(), "example-billing", &["example-orders"], config);
    let mut n = 0;
    while n < 100 {
        match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await? {
            Some(Event::Record(r)) => {
                n += 1;
                if n <= 3 {
                    println!(
                        "{}/{} @{}: {}",
                        r.topic,
                        r.partition,
                        r.record.offset,
                        String::from_utf8_lossy(&r.record.value)
                    );
                }
            }
            Some(Event::Assigned(tps)) => println!("assigned {tps:?}"),
            Some(Event::Revoked(tps)) => println!("revoked {tps:?}"),
            Some(Event::OffsetsUnavailable { partitions, error }) => {
                eprintln!("committed offsets of {partitions:?} unavailable (still retrying): {error}")
            }
            None => break,
        }
    }
    consumer.close().await?;
    println!("consumed {n} records; offsets committed for group example-billing");
    Ok(())
}
