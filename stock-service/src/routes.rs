//! The routing table and the OpenAPI document. The handlers live with their capability:
//! [`crate::items`], [`crate::reservations`]. Reads are public; writes need the internal token
//! and, when they are POSTs, an Idempotency-Key.

use actix_web::web;
use utoipa::OpenApi;

use crate::AppState;
use crate::items::{__path_get_item, __path_list_items, __path_put_item, get_item, list_items, put_item};
use crate::model::{Item, PutItemRequest, ReservationRef, ReservationResponse, ReservationStatus, ReserveRequest};
use crate::reservations::{
    __path_complete_reservation, __path_release_reservation, __path_reserve_stock, __path_restock_reservation,
    complete_reservation, release_reservation, reserve_stock, restock_reservation,
};

pub fn configure(state: AppState) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg| {
        cfg.app_data(web::Data::new(state.clone()))
            .service(web::resource("/items").get(list_items))
            .service(web::resource("/items/{id}").get(get_item).put(put_item))
            .service(web::resource("/reserve").post(reserve_stock))
            .service(web::resource("/release").post(release_reservation))
            .service(web::resource("/complete").post(complete_reservation))
            .service(web::resource("/restock").post(restock_reservation));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stock-service", description = "Items and reservations. Every error is application/problem+json."),
    servers((url = "/stock")),
    paths(list_items, get_item, put_item, reserve_stock, release_reservation, complete_reservation, restock_reservation),
    components(schemas(Item, PutItemRequest, ReserveRequest, ReservationResponse, ReservationRef, ReservationStatus))
)]
struct ApiDoc;

pub fn openapi_json() -> String {
    shared::openapi::render(ApiDoc::openapi())
}
