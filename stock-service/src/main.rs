#[actix_web::main]
async fn main() -> std::process::ExitCode {
    stock_service::main_entry().await
}
