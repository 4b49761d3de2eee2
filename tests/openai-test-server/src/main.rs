//! `openai-test-server [PORT]`: the test LLM as a process, for end-to-end tests in other
//! languages. Prints `listening <base_url>` once ready.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let server = openai_test_server::TestLlm::serve(listener);
    println!("listening {}", server.base_url());
    std::future::pending::<()>().await;
    Ok(())
}
