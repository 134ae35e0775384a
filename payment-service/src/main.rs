#[actix_web::main]
async fn main() -> std::process::ExitCode {
    payment_service::main_entry().await
}
