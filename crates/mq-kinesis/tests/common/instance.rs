//! A queue instance on its own runtime thread, so a test can crash it: the runtime is shut down
//! with every task dropped mid-flight, nothing released. Or stop it gracefully.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use mq_core::{ConsumerOptions, Handler, MessageQueue, QueueName};
use mq_kinesis::{KinesisOptions, KinesisQueue};

enum End {
    Crash,
    Stop,
}

pub struct Instance {
    end: Option<mpsc::Sender<End>>,
    thread: Option<JoinHandle<()>>,
}

impl Instance {
    pub fn spawn(
        endpoint: String,
        options: KinesisOptions,
        queue: QueueName,
        handler: Arc<dyn Handler>,
        consumer: ConsumerOptions,
    ) -> Self {
        Self::spawn_with(
            move || super::emulator::client(&endpoint, true, None, None),
            options,
            queue,
            handler,
            consumer,
        )
    }

    /// Like [`spawn`](Self::spawn), with the Kinesis client built on the instance's runtime by
    /// `client`.
    pub fn spawn_with(
        client: impl FnOnce() -> aws_sdk_kinesis::Client + Send + 'static,
        options: KinesisOptions,
        queue: QueueName,
        handler: Arc<dyn Handler>,
        consumer: ConsumerOptions,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<End>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (q, handle) = rt.block_on(async move {
                let q = KinesisQueue::with_client(client(), options);
                q.register(&queue).await.unwrap();
                let handle = q.consume(&queue, handler, consumer).await.unwrap();
                (q, handle)
            });
            match rx.recv() {
                Ok(End::Stop) => rt.block_on(async {
                    handle.stop().await;
                    let _ = q.shutdown().await;
                }),
                Ok(End::Crash) | Err(_) => {
                    rt.shutdown_background();
                    drop((q, handle));
                }
            }
        });
        Instance {
            end: Some(tx),
            thread: Some(thread),
        }
    }

    /// Kills the instance abruptly: no release, no checkpoint, renewals stop.
    pub fn crash(mut self) {
        self.finish(End::Crash);
    }

    /// Stops the instance gracefully (handoff: finish the batch, checkpoint, release) and waits
    /// until it stopped.
    pub fn stop(mut self) {
        self.finish(End::Stop);
    }

    fn finish(&mut self, how: End) {
        if let Some(k) = self.end.take() {
            let _ = k.send(how);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.finish(End::Crash);
    }
}
