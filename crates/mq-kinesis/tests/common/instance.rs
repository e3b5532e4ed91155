//! A queue instance on its own runtime thread, so a test can crash it: the runtime is shut down
//! with every task dropped mid-flight, nothing released.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use mq_core::{ConsumerOptions, Handler, MessageQueue, QueueName};
use mq_kinesis::{KinesisOptions, KinesisQueue};

pub struct Instance {
    kill: Option<mpsc::Sender<()>>,
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
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let kept = rt.block_on(async move {
                let client = super::emulator::client(&endpoint, true, None, None);
                let q = KinesisQueue::with_client(client, options);
                q.register(&queue).await.unwrap();
                let handle = q.consume(&queue, handler, consumer).await.unwrap();
                (q, handle)
            });
            let _ = rx.recv();
            rt.shutdown_background();
            drop(kept);
        });
        Instance {
            kill: Some(tx),
            thread: Some(thread),
        }
    }

    /// Kills the instance abruptly: no release, no checkpoint, renewals stop.
    pub fn crash(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill_now();
    }
}
