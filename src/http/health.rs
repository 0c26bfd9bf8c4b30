//! `GET /health`: what a load balancer or pm2 check needs to know. Each
//! configured backing service is probed with a short timeout so the check
//! itself never hangs.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::state::HttpState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// 200 when every configured part answers, else 503 `degraded` naming the
/// failing parts.
pub async fn health(app: web::Data<HttpState>) -> HttpResponse {
    let mut failing = Vec::new();
    let store_ok = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, app.chat.store.ping()).await,
        Ok(Ok(()))
    );
    if !store_ok {
        failing.push(app.chat.store.kind().as_str());
    }
    let bus = match &app.bus_health {
        None => "local",
        Some(health) => {
            if !health.is_up() {
                failing.push("redis");
            }
            "redis"
        }
    };
    if let Some(events) = &app.events {
        // Not connected to RabbitMQ, or the buffer is at its bound.
        if !events.is_up() {
            failing.push("events");
        }
    }
    let mut body = json!({
        "status": if failing.is_empty() { "ok" } else { "degraded" },
        "instance": app.settings.instance_id,
        "store": app.chat.store.kind().as_str(),
        "bus": bus,
        "failing": failing,
    });
    if let Some(health) = &app.bus_health {
        // Bus payloads this process could not decode since it started.
        body["busRejected"] = json!(health.rejected_payloads());
    }
    if let Some(events) = &app.events {
        body["events"] = json!("rabbitmq");
        // Events waiting for RabbitMQ (with MySQL: the whole outbox, as
        // this process last saw it) and events this process dropped
        // because the buffer was full, since it started.
        body["eventsBuffered"] = json!(events.buffered());
        body["eventsDropped"] = json!(events.dropped());
    }
    if failing.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
