//! OpenTelemetry trace export, off by default: brokers started with
//! `FERROLOG_OTLP_ENDPOINT` send their produce spans (with node, topic and
//! partition) to an OTLP gRPC collector, here a minimal one in the test.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::cluster::free_port;
use ferrolog_tests::eventually;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const START: Duration = Duration::from_secs(60);
const OP: Duration = Duration::from_secs(30);

/// A span as received: name and string-rendered attributes.
type Span = (String, Vec<(String, String)>);

#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("spans lock");
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(Value::IntValue(i)) => i.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    spans.push((s.name, attrs));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_spans_reach_an_otlp_collector() -> anyhow::Result<()> {
    let collector = Collector::default();
    let port = free_port()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(TraceServiceServer::new(collector.clone())).serve(addr),
    );
    let endpoint = format!("http://{addr}");
    let mut cluster = Cluster::start_with_env(3, &[("FERROLOG_OTLP_ENDPOINT", &endpoint)])?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("traced", 1, 3).await?;
    client.wait_leaders("traced", START).await?;
    client.produce("traced", 0, ferrolog_client::Acks::All, &[b"a".to_vec()], OP).await?;

    let span = eventually("a produce span at the collector", START, || async {
        let spans = collector.spans.lock().expect("spans lock");
        spans
            .iter()
            .find(|(name, attrs)| name == "produce" && attrs.iter().any(|(k, v)| k == "topic" && v == "traced"))
            .cloned()
            .ok_or_else(|| format!("{} spans so far, none a produce to traced", spans.len()))
    })
    .await?;
    let attr = |k: &str| span.1.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(attr("partition").as_deref(), Some("0"), "{span:?}");
    assert!(attr("node").is_some_and(|n| ["1", "2", "3"].contains(&n.as_str())), "{span:?}");
    server.abort();
    Ok(())
}
