//! Counters that tests and benchmarks read: sockets by key, and a record of every turn (how
//! many input items and bytes it received, whether it continued from the socket's memory).
//! Exposed by `SimulatorHandle::stats` and as JSON at `GET /sim/stats`.
//!
//! Every change bumps a watch channel, so a test can wait for a condition
//! (`SimulatorHandle::wait_for`) instead of sleeping.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Rest,
    /// `POST /v1/chat/completions`.
    Chat,
}

/// How a turn ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Incomplete,
    Failed,
    /// A request-scoped `error` (WS event or REST status) before any response event.
    Error,
    /// The connection was dropped before a terminal event (a fault, or the client left).
    Closed,
}

/// One turn, as the upstream received and answered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnRecord {
    /// 0-based position among all turns the simulator has seen.
    pub index: u64,
    pub transport: Transport,
    /// The WebSocket that carried it (`None` for REST).
    pub socket: Option<u64>,
    pub key: String,
    pub stream_id: Option<String>,
    pub model: Option<String>,
    /// Items in the request's `input` (a string counts as one).
    pub input_items: usize,
    /// Bytes of the request frame or body.
    pub bytes: usize,
    pub previous_response_id: Option<String>,
    /// `previous_response_id` was found in this socket's memory.
    pub continued: bool,
    /// `previous_response_id` was loaded from the persisted store.
    pub hydrated: bool,
    /// A `generate: false` warm-up.
    pub warmup: bool,
    pub outcome: Outcome,
    pub response_id: Option<String>,
    pub error_code: Option<String>,
    /// FNV-1a 64 of the raw request body, as 16 hex digits (chat requests only), so a test
    /// can tell that a body reached the upstream byte for byte.
    pub body_fnv1a: Option<String>,
}

/// The raw body of a recent chat request (`StatsSnapshot::chat_bodies`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatBody {
    /// The [`TurnRecord::index`] of its turn.
    pub turn: u64,
    pub bytes: usize,
    pub fnv1a: String,
    /// The body as sent (`None` past [`CHAT_BODY_TEXT_LIMIT`] bytes; the digest still holds).
    pub text: Option<String>,
}

/// One API request as it arrived (`StatsSnapshot::requests`): what an upstream sees of the
/// proxy's URLs and headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// By lower-case name; `authorization` and `api-key` masked (`Bearer sk-****-key`).
    pub headers: BTreeMap<String, String>,
}

impl SeenRequest {
    /// A WebSocket upgrade (the handshake of a socket).
    pub fn is_upgrade(&self) -> bool {
        self.headers
            .get("upgrade")
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
    }
}

/// How many recent API requests the stats keep.
pub const REQUESTS_KEPT: usize = 64;

/// How many recent chat bodies the stats keep.
pub const CHAT_BODIES_KEPT: usize = 32;
/// The largest chat body kept as text.
pub const CHAT_BODY_TEXT_LIMIT: usize = 1 << 20;

/// The stats record for a request, filled in as far as the raw body allows.
pub fn record(
    transport: Transport,
    socket: Option<u64>,
    key: &str,
    body: &Map<String, Value>,
    bytes: usize,
) -> TurnRecord {
    TurnRecord {
        index: 0,
        transport,
        socket,
        key: key.to_owned(),
        stream_id: body
            .get("stream_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        model: body.get("model").and_then(Value::as_str).map(str::to_owned),
        input_items: match body.get("input") {
            Some(Value::Array(items)) => items.len(),
            Some(Value::String(_)) => 1,
            _ => 0,
        },
        bytes,
        previous_response_id: body
            .get("previous_response_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        continued: false,
        hydrated: false,
        warmup: body.get("generate") == Some(&Value::Bool(false)),
        outcome: Outcome::Error,
        response_id: None,
        error_code: None,
        body_fnv1a: None,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyStats {
    pub sockets_opened: u64,
    pub sockets_closed: u64,
    pub turns: u64,
}

/// A point-in-time copy of all counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub sockets_opened: u64,
    pub sockets_closed: u64,
    pub sockets_open: u64,
    pub upgrades_refused: u64,
    /// WebSocket pings received (all sockets).
    pub pings_received: u64,
    pub turns_total: u64,
    pub bytes_received_total: u64,
    pub keys: BTreeMap<String, KeyStats>,
    /// The most recent turns (up to `stats_turn_capacity`), oldest first.
    pub turns: Vec<TurnRecord>,
    /// The raw bodies of the most recent chat requests (up to [`CHAT_BODIES_KEPT`]), oldest
    /// first, unknown and ignored fields included.
    pub chat_bodies: Vec<ChatBody>,
    /// The most recent API requests (up to [`REQUESTS_KEPT`]), upgrades included, oldest
    /// first; `/sim/*` is not recorded.
    pub requests: Vec<SeenRequest>,
}

impl StatsSnapshot {
    /// Turns carried by socket `id`, in order.
    pub fn turns_on(&self, socket: u64) -> impl Iterator<Item = &TurnRecord> {
        self.turns
            .iter()
            .filter(move |turn| turn.socket == Some(socket))
    }

    /// Distinct sockets that carried a turn for `key`.
    pub fn sockets_for(&self, key: &str) -> std::collections::BTreeSet<u64> {
        self.turns
            .iter()
            .filter(|turn| turn.key == key)
            .filter_map(|turn| turn.socket)
            .collect()
    }
}

#[derive(Debug)]
pub struct Stats {
    capacity: usize,
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    totals: StatsSnapshot,
    turns: VecDeque<TurnRecord>,
    chat_bodies: VecDeque<ChatBody>,
    requests: VecDeque<SeenRequest>,
    next_socket: u64,
}

impl Stats {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
            version: watch::Sender::new(0),
        }
    }

    /// Registers a new socket for `key` and returns its id.
    pub fn socket_opened(&self, key: &str) -> u64 {
        self.update(|inner| {
            inner.next_socket += 1;
            inner.totals.sockets_opened += 1;
            inner.totals.sockets_open += 1;
            inner
                .totals
                .keys
                .entry(key.to_owned())
                .or_default()
                .sockets_opened += 1;
            inner.next_socket
        })
    }

    pub fn socket_closed(&self, key: &str) {
        self.update(|inner| {
            inner.totals.sockets_closed += 1;
            inner.totals.sockets_open = inner.totals.sockets_open.saturating_sub(1);
            inner
                .totals
                .keys
                .entry(key.to_owned())
                .or_default()
                .sockets_closed += 1;
        });
    }

    pub fn upgrade_refused(&self) {
        self.update(|inner| inner.totals.upgrades_refused += 1);
    }

    pub fn request_seen(&self, request: SeenRequest) {
        self.update(|inner| {
            if inner.requests.len() == REQUESTS_KEPT {
                inner.requests.pop_front();
            }
            inner.requests.push_back(request);
        });
    }

    pub fn ping_received(&self) {
        self.update(|inner| inner.totals.pings_received += 1);
    }

    /// Records a finished chat turn and keeps its raw body.
    pub fn chat_turn(&self, mut record: TurnRecord, body: &[u8]) {
        let fnv1a = format!("{:016x}", fnv1a(body));
        record.body_fnv1a = Some(fnv1a.clone());
        let text = (body.len() <= CHAT_BODY_TEXT_LIMIT)
            .then(|| String::from_utf8_lossy(body).into_owned());
        let bytes = body.len();
        self.record(record, move |inner, turn| {
            if inner.chat_bodies.len() == CHAT_BODIES_KEPT {
                inner.chat_bodies.pop_front();
            }
            inner.chat_bodies.push_back(ChatBody {
                turn,
                bytes,
                fnv1a,
                text,
            });
        });
    }

    /// Records a finished turn; `record.index` is assigned here.
    pub fn turn(&self, record: TurnRecord) {
        self.record(record, |_, _| {});
    }

    fn record(&self, mut record: TurnRecord, also: impl FnOnce(&mut Inner, u64)) {
        self.update(|inner| {
            record.index = inner.totals.turns_total;
            also(inner, record.index);
            inner.totals.turns_total += 1;
            inner.totals.bytes_received_total += record.bytes as u64;
            inner
                .totals
                .keys
                .entry(record.key.clone())
                .or_default()
                .turns += 1;
            if self.capacity > 0 {
                if inner.turns.len() == self.capacity {
                    inner.turns.pop_front();
                }
                inner.turns.push_back(record);
            }
        });
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let inner = self.lock();
        StatsSnapshot {
            turns: inner.turns.iter().cloned().collect(),
            chat_bodies: inner.chat_bodies.iter().cloned().collect(),
            requests: inner.requests.iter().cloned().collect(),
            ..inner.totals.clone()
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn update<T>(&self, change: impl FnOnce(&mut Inner) -> T) -> T {
        let out = change(&mut self.lock());
        self.version.send_modify(|version| *version += 1);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// FNV-1a 64 over `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
