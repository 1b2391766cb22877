//! `GET /v1/models` and `/v1/models/{id}`: answered by weir from the config, with
//! only the models this caller may use.

use super::caller::Caller;
use super::ctx::Ctx;
use super::failure::Failure;
use super::respond;
use pingora_core::protocols::http::ServerSession as Session;
use weir_filters::config::{Gateway, Runtime};
use weir_filters::GatewayError;

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "weir"})
}

/// The models this caller may use on this gateway.
fn visible_models(snap: &Runtime, gateway: &Gateway, caller: Option<&Caller>) -> Vec<String> {
    let group = caller.map(|c| c.group.as_str()).unwrap_or("default");
    let mut models = snap.list_models(gateway, group);
    if let Some(c) = caller {
        models.retain(|m| c.may_use(m, m));
    }
    models
}

pub async fn list(
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Runtime,
    gateway: &Gateway,
) -> Result<(), Failure> {
    let data: Vec<serde_json::Value> = visible_models(snap, gateway, ctx.who.caller.as_ref())
        .iter()
        .map(|m| model_object(m))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
        .unwrap_or_default();
    respond::json(session, ctx, 200, body, &[])
        .await
        .map_err(Failure::Abort)
}

pub async fn get(
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Runtime,
    gateway: &Gateway,
    id: &str,
) -> Result<(), Failure> {
    if !visible_models(snap, gateway, ctx.who.caller.as_ref())
        .iter()
        .any(|m| m == id)
    {
        return Err(GatewayError::ModelNotFound(id.to_string()).into());
    }
    let body = serde_json::to_vec(&model_object(id)).unwrap_or_default();
    respond::json(session, ctx, 200, body, &[])
        .await
        .map_err(Failure::Abort)
}
