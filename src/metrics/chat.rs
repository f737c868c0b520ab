//! The Chat Completions series: which path chat requests took, why some were passed through,
//! and how bridged chat turns finished.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Metrics;
use crate::outcome::{ChatFinish, ChatPassthrough, ChatRoute};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: ChatRoute,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: ChatPassthrough,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    finish: ChatFinish,
}

#[derive(Debug)]
pub(super) struct ChatMetrics {
    routes: Family<RouteLabels, Counter>,
    passthroughs: Family<ReasonLabels, Counter>,
    finishes: Family<FinishLabels, Counter>,
}

impl ChatMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            routes: Family::default(),
            passthroughs: Family::default(),
            finishes: Family::default(),
        };
        registry.register(
            "chat_requests",
            "POST /v1/chat/completions by the path it took (bridged, passthrough)",
            metrics.routes.clone(),
        );
        registry.register(
            "chat_passthroughs",
            "Chat requests passed through to the upstream's chat endpoint, by reason",
            metrics.passthroughs.clone(),
        );
        registry.register(
            "chat_finishes",
            "Bridged chat turns by finish_reason, or failed",
            metrics.finishes.clone(),
        );
        metrics
    }

    /// Every series at zero (see `Metrics::zero_every_series`).
    pub(super) fn zero(&self) {
        for route in ChatRoute::ALL {
            drop(self.routes.get_or_create(&RouteLabels { route }));
        }
        for reason in ChatPassthrough::ALL {
            drop(self.passthroughs.get_or_create(&ReasonLabels { reason }));
        }
        for finish in ChatFinish::ALL {
            drop(self.finishes.get_or_create(&FinishLabels { finish }));
        }
    }
}

impl Metrics {
    /// A chat request took `route`.
    pub fn chat_route(&self, route: ChatRoute) {
        self.chat.routes.get_or_create(&RouteLabels { route }).inc();
    }

    /// A chat request was passed through, for `reason`.
    pub fn chat_passthrough(&self, reason: ChatPassthrough) {
        self.chat
            .passthroughs
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A bridged chat turn ended.
    pub fn chat_finish(&self, finish: ChatFinish) {
        self.chat
            .finishes
            .get_or_create(&FinishLabels { finish })
            .inc();
    }
}

/// Every variant of the labelled enums, to create their series at zero.
impl ChatRoute {
    pub const ALL: [Self; 2] = [Self::Bridged, Self::Passthrough];
}

impl ChatPassthrough {
    pub const ALL: [Self; 17] = [
        Self::Mode,
        Self::Fallback,
        Self::Choices,
        Self::Logprobs,
        Self::Stop,
        Self::LogitBias,
        Self::Penalties,
        Self::Seed,
        Self::Store,
        Self::Audio,
        Self::Prediction,
        Self::WebSearch,
        Self::LegacyFunctions,
        Self::Content,
        Self::Tools,
        Self::Field,
        Self::OutputLimit,
    ];
}

impl ChatFinish {
    pub const ALL: [Self; 6] = [
        Self::Stop,
        Self::ToolCalls,
        Self::FunctionCall,
        Self::Length,
        Self::ContentFilter,
        Self::Failed,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_series_exist_from_the_first_scrape_and_count() {
        let metrics = Metrics::default();
        metrics.chat_passthrough(ChatPassthrough::LogitBias);
        let text = metrics.render([0, 0, 0], 0);
        for series in [
            "wsbridge_chat_requests_total{route=\"passthrough\"} 0",
            "wsbridge_chat_passthroughs_total{reason=\"logit_bias\"} 1",
            "wsbridge_chat_passthroughs_total{reason=\"legacy_functions\"} 0",
            "wsbridge_chat_finishes_total{finish=\"tool_calls\"} 0",
            "wsbridge_requests_total{route=\"chat\",status=\"200\"} 0",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
    }
}
