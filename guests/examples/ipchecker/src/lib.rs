//! An action asking an IP checker service whether the client may pass; it
//! sets `req.blocked` (the seed's `ipchecker.lua`). Use:
//! `http-request ipchecker.checkip IP PORT` then
//! `http-request deny if { var(req.blocked) -m bool }`.
use moonbox_sdk::prelude::*;

async fn ask(addr: &str, client: &str) -> Result<String, IoError> {
    let mut sock = TcpSocket::connect(addr).await?;
    sock.set_timeout_ms(Some(5000));
    sock.send(format!("GET /{client} HTTP/1.0\r\nHost: {addr}\r\n\r\n"))
        .await?;
    // Skip the status line and headers, up to the empty line.
    loop {
        let line = sock.receive_line().await?;
        if line.is_empty() {
            break;
        }
    }
    let body = sock.receive(moonbox_sdk::Receive::All).await?;
    let _ = sock.close().await;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

use moonbox_sdk::IoError;

fn init(ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
    ext.action("checkip", &[Facility::HttpReq], 2, |txn, args| async move {
        let addr = format!("{}:{}", args[0], args[1]);
        let client = txn.sf("src", &[]);
        let blocked = match ask(&addr, &client).await {
            Ok(answer) => answer != "allow",
            Err(e) => {
                log::warning(&format!("ipchecker: {addr}: {}", e.message));
                true
            }
        };
        txn.set_var("req.blocked", blocked)?;
        Ok(Verdict::Continue)
    });
    Ok(())
}

moonbox_sdk::export!(init);
