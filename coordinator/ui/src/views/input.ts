// The value of the input or select an event came from: what every form handler here reads.
export function valueOf(event: Event): string {
  return (event.target as HTMLInputElement | HTMLSelectElement).value;
}
