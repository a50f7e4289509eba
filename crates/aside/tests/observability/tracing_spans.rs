//! Spans: the events of a load and of a background refresh, both run in
//! tasks of their own, carry the caller's span and aside's span for the
//! operation, with the namespace and without keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::Cache;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One event: its message and the names and fields of its spans, root first.
#[derive(Debug, Clone)]
struct Seen {
    message: String,
    spans: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

#[derive(Default)]
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

/// The fields of each span, kept in its extensions.
struct SpanFields(String);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut message = Fields::default();
        event.record(&mut message);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|s| {
                        let fields = s
                            .extensions()
                            .get::<SpanFields>()
                            .map(|f| f.0.clone())
                            .unwrap_or_default();
                        (s.name().to_owned(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().push(Seen {
            message: message.0,
            spans,
        });
    }
}

impl Recorder {
    fn find(&self, text: &str) -> Option<Seen> {
        let seen = self.0.lock().unwrap();
        seen.iter().find(|s| s.message.contains(text)).cloned()
    }
}

fn names(seen: &Seen) -> Vec<&str> {
    seen.spans.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn loads_and_refreshes_carry_the_callers_span() {
    let recorder = Recorder::default();
    // The current-thread runtime runs the spawned tasks on this thread, so
    // a thread-local subscriber sees them.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let cache = Cache::builder()
        .namespace("traced")
        .ttl(Duration::from_millis(30))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Some(Duration::from_secs(60)))
        .build()
        .unwrap();

    let request = tracing::info_span!("request", id = 1);
    let first: Option<u32> = tracing::Instrument::instrument(
        cache.get_or_load("secret-key", || async {
            tracing::info!("first load ran");
            Ok::<_, std::io::Error>(Some(1))
        }),
        request,
    )
    .await
    .unwrap();
    assert_eq!(first, Some(1));
    let load = recorder.find("first load ran").expect("the loader's event");
    assert_eq!(names(&load), ["request", "aside.get_or_load"], "{load:?}");
    assert!(load.spans[1].1.contains("namespace=traced"), "{load:?}");

    // Stale now: the read answers at once and a refresh runs in a task.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (done, refreshed) = tokio::sync::oneshot::channel();
    let request = tracing::info_span!("request", id = 2);
    let stale: Option<u32> = tracing::Instrument::instrument(
        cache.get_or_load("secret-key", || async move {
            tracing::info!("refresh loader ran");
            let _ = done.send(());
            Ok::<_, std::io::Error>(Some(2))
        }),
        request,
    )
    .await
    .unwrap();
    assert_eq!(stale, Some(1));
    tokio::time::timeout(Duration::from_secs(5), refreshed)
        .await
        .unwrap()
        .unwrap();
    let refresh = recorder
        .find("refresh loader ran")
        .expect("the refresh's event");
    assert_eq!(names(&refresh), ["request", "aside.refresh"], "{refresh:?}");
    assert!(refresh.spans[0].1.contains("id=2"), "{refresh:?}");

    // Spans name the namespace, never a key.
    for seen in recorder.0.lock().unwrap().iter() {
        for (name, fields) in &seen.spans {
            assert!(!fields.contains("secret-key"), "{name}: {fields}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn warm_loads_carry_the_callers_span() {
    let recorder = Recorder::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let cache = Cache::builder().namespace("traced").build().unwrap();
    let request = tracing::info_span!("startup", id = 3);
    let report = tracing::Instrument::instrument(
        cache.warm(
            ["a", "b", "c"],
            |keys: Vec<String>| async move {
                tracing::info!("warm loader ran");
                Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, 1u32)).collect())
            },
            &aside::WarmOptions::new().chunk_size(2),
        ),
        request,
    )
    .await
    .unwrap();
    assert_eq!(report.loaded, 3);
    let load = recorder
        .find("warm loader ran")
        .expect("the loader's event");
    assert_eq!(names(&load).first(), Some(&"startup"), "{load:?}");
}
