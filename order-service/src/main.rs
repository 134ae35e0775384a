#[actix_web::main]
async fn main() -> std::process::ExitCode {
    order_service::main_entry().await
}
