//! What the HTTP handlers share: the settings, the page's templates, the
//! bus's health for `/health`, and the sessions' context (store, room
//! manager, limits), through which REST reaches the chat.

use std::sync::Arc;

use handlebars::Handlebars;

use crate::actors::bus::BusHealth;
use crate::actors::context::SessionContext;
use crate::config::Settings;
use crate::events::Events;

pub struct HttpState {
    pub settings: Arc<Settings>,
    /// The context every WebSocket session gets.
    pub chat: Arc<SessionContext>,
    pub templates: Handlebars<'static>,
    /// `None` when running alone (no `REDIS_URL`).
    pub bus_health: Option<BusHealth>,
    /// `None` without `AMQP_URL`.
    pub events: Option<Arc<Events>>,
}
