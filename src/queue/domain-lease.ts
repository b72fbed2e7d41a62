import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { QUEUE_PREFIX } from './jobs.js';

/**
 * One operation per domain across every worker: a Redis key with a lease
 * (PX), renewed while held, naming its holder, and a fencing token that only
 * grows, so a holder whose lease ran out can tell it lost the domain.
 */
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;

export class DomainLease {
  private timer: NodeJS.Timeout | undefined;
  private lost = false;

  private constructor(
    private readonly redis: Redis,
    readonly key: string,
    readonly value: string,
    readonly token: number,
    private readonly leaseMs: number,
  ) {}

  static key(domain: string): string {
    return `${QUEUE_PREFIX}:lease:${domain}`;
  }

  /** Take the domain, or undefined when another holder has it. */
  static async acquire(redis: Redis, domain: string, holder: string, leaseMs: number): Promise<DomainLease | undefined> {
    const token = await redis.incr(`${QUEUE_PREFIX}:fence:${domain}`);
    const value = JSON.stringify({ holder, token, nonce: randomBytes(4).toString('hex') });
    const ok = await redis.set(DomainLease.key(domain), value, 'PX', leaseMs, 'NX');
    if (ok !== 'OK') return undefined;
    const lease = new DomainLease(redis, DomainLease.key(domain), value, token, leaseMs);
    lease.timer = setInterval(() => void lease.renew(), Math.max(100, Math.floor(leaseMs / 3)));
    lease.timer.unref();
    return lease;
  }

  /** Who holds the domain now, for messages. */
  static async holder(redis: Redis, domain: string): Promise<string | undefined> {
    const v = await redis.get(DomainLease.key(domain));
    if (v === null) return undefined;
    try {
      return (JSON.parse(v) as { holder?: string }).holder;
    } catch {
      return v;
    }
  }

  get isLost(): boolean {
    return this.lost;
  }

  async renew(): Promise<boolean> {
    try {
      const r = await this.redis.eval(RENEW, 1, this.key, this.value, String(this.leaseMs));
      if (r === 0) this.lost = true;
      return r === 1;
    } catch {
      return false; // Redis away for a moment: the lease runs on until it expires
    }
  }

  async release(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.redis.eval(RELEASE, 1, this.key, this.value).catch(() => undefined);
  }
}
