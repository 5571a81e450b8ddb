//! tokio-tungstenite on a current-thread runtime: `SinkExt::send` (one flush, so one `write(2)`,
//! per message). The throughput test splits the stream and runs a writer and a reader
//! concurrently, so it keeps reading while a large write drains.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio::time::timeout;
use tungstenite::{Bytes, Message, Utf8Bytes};

use crate::job::{bin64k, Job, Params, Test, TEXT32};

pub fn run(job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    // Overall bound: the test's own length plus generous slack.
    let limit = p.rtt_max + p.tput_warmup + p.tput_time + p.idle + p.stall * 2;
    rt.block_on(async {
        match timeout(limit, session(job, url, p)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        }
    })
}

fn len(m: &Message) -> Option<usize> {
    match m {
        Message::Text(t) => Some(t.len()),
        Message::Binary(b) => Some(b.len()),
        _ => None,
    }
}

async fn session(job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let msg = if job.test().binary() {
        Message::Binary(Bytes::from(bin64k()))
    } else {
        Message::Text(Utf8Bytes::from_static(TEXT32))
    };
    match job.test() {
        Test::Idle => {
            job.start();
            let r = timeout(p.idle, ws.next()).await;
            job.idle_end();
            if r.is_ok() {
                return Err("idle connection received something".into());
            }
        }
        Test::Rtt32 => {
            let mut k = job.start();
            loop {
                for _ in 0..k {
                    ws.send(msg.clone())
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                }
                if job.is_done() {
                    break;
                }
                k = match timeout(p.stall, ws.next()).await {
                    Ok(Some(Ok(m))) => len(&m).map_or(0, |n| job.on_echo(n)),
                    Ok(Some(Err(e))) => return Err(format!("read: {e}")),
                    Ok(None) => return Err("closed".into()),
                    Err(_) => return Err("stalled".into()),
                };
            }
        }
        Test::Tput32 | Test::Tput64k => {
            let (mut sink, mut stream) = ws.split();
            let credit = Rc::new(Cell::new(job.start()));
            let done = Rc::new(Cell::new(false));
            let notify = Rc::new(Notify::new());
            let writer = {
                let (credit, done, notify, msg) =
                    (credit.clone(), done.clone(), notify.clone(), msg.clone());
                async move {
                    while !done.get() {
                        if credit.get() == 0 {
                            notify.notified().await;
                            continue;
                        }
                        credit.set(credit.get() - 1);
                        sink.send(msg.clone())
                            .await
                            .map_err(|e| format!("send: {e}"))?;
                    }
                    Ok::<_, String>(sink)
                }
            };
            let reader = async {
                let r = loop {
                    match timeout(p.stall, stream.next()).await {
                        Ok(Some(Ok(m))) => {
                            if let Some(n) = len(&m) {
                                let k = job.on_echo(n);
                                if k > 0 {
                                    credit.set(credit.get() + k);
                                    notify.notify_one();
                                }
                            }
                            if job.is_done() {
                                break Ok(());
                            }
                        }
                        Ok(Some(Err(e))) => break Err(format!("read: {e}")),
                        Ok(None) => break Err("closed".to_string()),
                        Err(_) => break Err("stalled".to_string()),
                    }
                };
                done.set(true);
                notify.notify_one();
                r
            };
            let (w, r) = tokio::join!(writer, reader);
            r?;
            let sink = w?;
            ws = sink
                .reunite(stream)
                .map_err(|_| "reunite failed".to_string())?;
        }
    }
    // Close; read what is still in flight until the server's Close.
    let _ = timeout(Duration::from_secs(5), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}
