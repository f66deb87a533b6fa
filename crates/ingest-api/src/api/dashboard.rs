//! `/dashboard`: one page with its script and style, compiled into the binary, so the
//! dashboard needs nothing but sift (no CDN, no outside network). The page asks for the API
//! key and calls the read API with it from the browser.

use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::{web, HttpResponse};

use crate::error::ApiError;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// The dashboard page (it asks for a key with the read scope, and calls the read API).
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "service",
    responses((status = 200, description = "The page", content_type = "text/html"))
)]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        // The key is typed into this page: forbid framing and outside scripts.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; frame-ancestors 'none'",
        ))
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .body(PAGE)
}

/// The dashboard's script and style.
#[utoipa::path(
    get,
    path = "/dashboard/{asset}",
    tag = "service",
    params(("asset" = String, Path, description = "`dashboard.js` or `dashboard.css`")),
    responses(
        (status = 200, description = "The asset"),
        (status = 404, description = "No such asset", body = crate::openapi::ErrorBody),
    )
)]
pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (body, content_type) = match name.as_str() {
        "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        other => return Err(ApiError::NotFound(format!("no dashboard asset {other:?}"))),
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .body(body))
}
