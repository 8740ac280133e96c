//! Logging: JSON lines in `serve`, human-readable in `dev`, filtered by
//! `RUST_LOG` (default `info`; Postgres NOTICEs only when asked for).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

const NOTICE_TARGET: &str = "sqlx::postgres::notice";

/// Install the global subscriber, writing to `writer`. Called once at start.
pub fn init<W>(format: LogFormat, filter: Option<&str>, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter.unwrap_or("info");
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Postgres reports routine NOTICEs (e.g. the migrations table "already
    // exists, skipping" at every start) and sqlx logs them at INFO: keep them
    // out unless the filter names that target itself.
    if !filter.to_string().contains(NOTICE_TARGET) {
        filter = filter.add_directive(
            format!("{NOTICE_TARGET}=warn")
                .parse()
                .expect("a valid directive"),
        );
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
