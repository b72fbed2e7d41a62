import type { DomainState } from '../domain/model.js';

/**
 * What vmsnap needs from a hypervisor. The foundation only asks for the
 * state; running-domain operations (pause, save memory, online disk
 * snapshots, revert) extend this interface with the QMP driver.
 */
export interface HypervisorDriver {
  readonly name: 'qemu' | 'libvirt' | 'xen';
  getState(): Promise<DomainState>;
}
