//! `GET /metrics`: the process's series in the Prometheus text format (see
//! `telemetry.rs`), on the main port or, with `METRICS_ADDR`, only on a
//! listener of its own; and the middleware that counts REST error answers
//! by code.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::state::HttpState;
use crate::error::{AnsweredCode, ChatError};
use crate::telemetry::CONTENT_TYPE;

/// The Prometheus text; the open connections are read now.
pub async fn metrics(app: web::Data<HttpState>) -> HttpResponse {
    let text = app.chat.metrics.render(app.chat.connections.total());
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(text)
}

/// Counts every error answer by its code (`chat_errors_total`): the code
/// travels in the response's extensions (see `ChatError::error_response`),
/// so no body is parsed.
pub async fn count_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let app = req.app_data::<web::Data<HttpState>>().cloned();
    let answered = next.call(req).await;
    if let Some(app) = app {
        let code = match &answered {
            Ok(res) => res
                .response()
                .extensions()
                .get::<AnsweredCode>()
                .map(|c| c.0),
            Err(e) => e.as_error::<ChatError>().map(ChatError::code),
        };
        if let Some(code) = code {
            app.chat.metrics.error(code);
        }
    }
    answered
}
