//! `strata`: the server and its command-line client in one binary. The
//! logic lives in the library crates; this file only parses arguments and
//! dispatches.

mod bench;
mod bench_lake;
mod bench_query;
mod bench_serve;
mod client;
mod config;
mod consume;
mod node;
mod produce;
mod query;
mod serve;
mod token;
mod topic;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "A streaming data lake: a durable partitioned log over HTTP"
)]
struct Cli {
    /// Server that client commands talk to.
    #[arg(
        long,
        global = true,
        env = "STRATA_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce NDJSON records (one record object per line) from a file or stdin.
    Produce(produce::ProduceArgs),
    /// Print records of a topic as NDJSON.
    Consume(consume::ConsumeArgs),
    /// Print every record in a time range, from both tiers.
    Range(query::RangeArgs),
    /// Run one SQL query over topics and views.
    Query(query::QueryArgs),
    /// Built-in load generator and timer.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Create, list and revoke bearer tokens (client commands send
    /// STRATA_TOKEN).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Cluster nodes: drain one before stopping it.
    #[command(subcommand)]
    Node(node::NodeCommand),
}

/// Flags of `strata serve`; each overrides its `STRATA_*` variable, which
/// overrides the config file.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "STRATA_LISTEN")]
    listen: Option<String>,
    /// Directory of all local data.
    #[arg(long, env = "STRATA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Cold tier: file:///abs/path or s3://bucket/prefix. Nodes that share
    /// one form one cluster.
    #[arg(long, env = "STRATA_OBJECT_STORE")]
    object_store: Option<String>,
    /// This node's name in the cluster, [A-Za-z0-9._-]{1,64} (default: made
    /// at the first start and kept in the data directory).
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: Option<String>,
    /// The URL other nodes and clients reach this node at (default:
    /// http://<listen address>).
    #[arg(long, env = "STRATA_ADVERTISE")]
    advertise: Option<String>,
    /// Require a bearer token on every request but GET /health
    /// (also `[auth] enabled = true`).
    #[arg(long, env = "STRATA_AUTH", num_args = 0..=1, default_missing_value = "true")]
    auth: Option<bool>,
    /// Serve HTTPS only, with this PEM certificate chain (reloaded when the
    /// file changes); needs --tls-key.
    #[arg(long, env = "STRATA_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "STRATA_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA in this PEM bundle.
    #[arg(long, env = "STRATA_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long)]
        partitions: Option<u32>,
        /// Topic settings as key=value (segment_bytes, segment_ms, retention_ms, timestamp_type, ...).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// List topics.
    List,
    /// Describe a topic.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strata: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Topic(cmd) => topic::run(&cli.server, cmd).await,
            Command::Produce(args) => produce::run(&cli.server, args).await,
            Command::Consume(args) => consume::run(&cli.server, args).await,
            Command::Range(args) => query::range(&cli.server, args).await,
            Command::Query(args) => query::query(&cli.server, args).await,
            Command::Bench(cmd) => bench::run(&cli.server, cmd).await,
            Command::Token(cmd) => token::run(&cli.server, cmd).await,
            Command::Node(cmd) => node::run(&cli.server, cmd).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own heap arena (up to 8 per
/// core); with the blocking threads of group commit and offload, freed
/// memory then stays spread over many arenas. Two arenas cut the server's
/// peak RSS under the produce benchmark from ~250 MiB to ~95 MiB at the same
/// throughput (docs/benchmarks.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
