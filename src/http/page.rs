//! `GET /chat`: the browser page, rendered from `templates/chat.hbs` with
//! the configured limits so the page validates exactly as the server does.

use actix_web::{http::header, web, HttpResponse};
use serde_json::json;

use super::state::HttpState;
use crate::error::ChatError;

/// Renders the chat page.
pub async fn chat_page(app: web::Data<HttpState>) -> Result<HttpResponse, ChatError> {
    let limits = &app.settings.limits;
    let data = json!({
        "maxTitle": limits.title,
        "maxNickname": limits.nickname,
        "maxContent": limits.content,
        "instance": app.settings.instance_id,
    });
    let html = app
        .templates
        .render("chat", &data)
        .map_err(|e| ChatError::unavailable_because("cannot render the chat page", e))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

/// `/` leads to the page.
pub async fn redirect_to_chat() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/chat"))
        .finish()
}
