//! The test SMTP server's hold, which the restart and crash tests use to stop or kill a node at
//! a known point: after `pause_after(n)` messages the next ones are held unanswered, then
//! answered, taken without an answer, or hung up on, as the test says. Spoken to over raw SMTP.

use std::net::SocketAddr;
use std::time::Duration;

use lectern_testkit::SmtpServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::gateway::within;

const WAIT: Duration = Duration::from_secs(20);

/// A client that sent one message up to its final dot, not yet reading the reply.
struct Sent(BufReader<TcpStream>);

impl Sent {
    async fn reply(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        Ok(line)
    }

    /// Asserts that no reply came so far.
    fn nothing_yet(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.0.buffer().is_empty(), "{:?}", self.0.buffer());
        let mut buf = [0u8; 64];
        match self.0.get_ref().try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            other => anyhow::bail!("expected no reply, got {other:?}"),
        }
    }

    /// Hangs up our side and reads what the server sent until it closed.
    async fn hang_up_and_read_rest(mut self) -> anyhow::Result<Vec<u8>> {
        self.0.get_mut().shutdown().await?;
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, self.0.read_to_end(&mut rest)).await??;
        Ok(rest)
    }

    /// Reads what the server sent until it closed.
    async fn read_rest(mut self) -> anyhow::Result<Vec<u8>> {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, self.0.read_to_end(&mut rest)).await??;
        Ok(rest)
    }
}

async fn send(addr: SocketAddr, to: &str) -> anyhow::Result<Sent> {
    let mut s = BufReader::new(TcpStream::connect(addr).await?);
    async fn expect(s: &mut BufReader<TcpStream>, code: &str) -> anyhow::Result<()> {
        loop {
            let mut line = String::new();
            s.read_line(&mut line).await?;
            anyhow::ensure!(line.starts_with(code), "expected {code}, got {line:?}");
            // `250-` continues a multi-line reply.
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }
    expect(&mut s, "220").await?;
    for (cmd, code) in [
        ("EHLO test\r\n".to_owned(), "250"),
        ("MAIL FROM:<a@example.test>\r\n".to_owned(), "250"),
        (format!("RCPT TO:<{to}>\r\n"), "250"),
        ("DATA\r\n".to_owned(), "354"),
    ] {
        s.get_mut().write_all(cmd.as_bytes()).await?;
        expect(&mut s, code).await?;
    }
    s.get_mut()
        .write_all(format!("Subject: to {to}\r\n\r\nHello.\r\n.\r\n").as_bytes())
        .await?;
    Ok(Sent(s))
}

fn recipients(smtp: &SmtpServer) -> Vec<String> {
    smtp.mails()
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_smtp_server_holds_messages_after_n_until_told_what_to_do() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let addr = smtp.addr();
        smtp.pause_after(1);
        let mut a = send(addr, "a@x.test").await?;
        assert!(a.reply().await?.starts_with("250"));

        // Held: no reply, not among the mails.
        let mut b = send(addr, "b@x.test").await?;
        let mut c = send(addr, "c@x.test").await?;
        smtp.wait_for_held(2, WAIT).await?;
        b.nothing_yet()?;
        c.nothing_yet()?;
        assert_eq!(recipients(&smtp), ["a@x.test"]);

        // Released: both answered and accepted; the pause goes on.
        assert_eq!(smtp.release_held(), 2);
        assert!(b.reply().await?.starts_with("250"));
        assert!(c.reply().await?.starts_with("250"));
        assert_eq!(recipients(&smtp).len(), 3);

        // Taken unanswered: accepted, and the sender never hears back.
        let d = send(addr, "d@x.test").await?;
        smtp.wait_for_held(1, WAIT).await?;
        assert_eq!(smtp.take_held_unanswered(), 1);
        assert_eq!(
            recipients(&smtp).last().map(String::as_str),
            Some("d@x.test")
        );
        assert_eq!(d.hang_up_and_read_rest().await?, b"");

        // Dropped: the server hangs up without a reply and never accepts it.
        let e = send(addr, "e@x.test").await?;
        smtp.wait_for_held(1, WAIT).await?;
        assert_eq!(smtp.drop_held(), 1);
        assert_eq!(e.read_rest().await?, b"");
        assert_eq!(smtp.held(), 0);
        assert_eq!(recipients(&smtp).len(), 4);

        // Resumed: held ones and later ones are accepted.
        let mut f = send(addr, "f@x.test").await?;
        smtp.wait_for_held(1, WAIT).await?;
        smtp.resume();
        assert!(f.reply().await?.starts_with("250"));
        let mut g = send(addr, "g@x.test").await?;
        assert!(g.reply().await?.starts_with("250"));
        assert_eq!(
            recipients(&smtp),
            [
                "a@x.test", "b@x.test", "c@x.test", "d@x.test", "f@x.test", "g@x.test"
            ]
        );
        Ok(())
    })
    .await
    .unwrap();
}
