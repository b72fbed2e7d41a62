/**
 * Fault injection for the crash-safety tests: VMSNAP_FAULT="memory:start"
 * kills this process with SIGKILL right after that journal entry is on disk,
 * as a power cut or OOM kill would. Never set in production.
 */
export function faultPoint(step: string, data: Record<string, unknown> | undefined): void {
  const want = process.env['VMSNAP_FAULT'];
  if (want === undefined || want === '') return;
  const phase = typeof data?.['phase'] === 'string' ? `:${data['phase']}` : '';
  if (want === step || want === `${step}${phase}`) process.kill(process.pid, 'SIGKILL');
}
