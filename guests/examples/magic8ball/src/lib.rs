//! An HTTP service answering with a Magic 8-ball reply (the seed's
//! `magic8ball.lua`). Use: `http-request use-service magic8ball.magic8ball if { path /magic }`.
use moonbox_sdk::prelude::*;

const ANSWERS: &[&str] = &[
    "It is certain",
    "It is decidedly so",
    "Without a doubt",
    "Yes definitely",
    "You may rely on it",
    "As I see it, yes",
    "Most likely",
    "Outlook good",
    "Yes",
    "Signs point to yes",
    "Reply hazy try again",
    "Ask again later",
    "Better not tell you now",
    "Cannot predict now",
    "Concentrate and ask again",
    "Don't count on it",
    "My reply is no",
    "My sources say no",
    "Outlook not so good",
    "Very doubtful",
];

fn init(ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
    ext.http_service("magic8ball", |_txn, mut applet| async move {
        let (secs, micros) = now();
        let answer = ANSWERS[((secs ^ micros as u64) % ANSWERS.len() as u64) as usize];
        let body = format!("{answer}\n");
        applet.set_status(200, None);
        applet.add_header("content-type", "text/plain");
        applet.add_header("content-length", &body.len().to_string());
        applet.start_response().await.map_err(|e| e.message)?;
        applet.send(body).await.map_err(|e| e.message)?;
        Ok(())
    });
    Ok(())
}

moonbox_sdk::export!(init);
