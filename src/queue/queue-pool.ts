import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { QUEUE_PREFIX, queueName } from './jobs.js';
import { createRedis, type RedisTarget } from './redis.js';

/**
 * One BullMQ Queue per host, opened on first use, and closed together with
 * its connection (BullMQ does not close connections it was handed).
 */
export class QueuePool {
  private readonly queues = new Map<string, { queue: Queue; connection: Redis }>();

  constructor(private readonly target: RedisTarget) {}

  for(host: string): Queue {
    let entry = this.queues.get(host);
    if (entry === undefined) {
      const connection = createRedis(this.target);
      entry = { queue: new Queue(queueName(host), { connection, prefix: QUEUE_PREFIX }), connection };
      this.queues.set(host, entry);
    }
    return entry.queue;
  }

  async close(): Promise<void> {
    for (const { queue, connection } of this.queues.values()) {
      await queue.close();
      connection.disconnect();
    }
    this.queues.clear();
  }
}
