/* Placeholder until the benchmark lands. */
int main(void) { return 0; }
