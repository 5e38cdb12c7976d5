// The few parts of swagger-ui-dist's ES bundle (it ships no types) that the API reference page uses.
declare module "swagger-ui-dist/swagger-ui-es-bundle.js" {
  interface SwaggerRequest {
    url: string;
    headers: Record<string, string>;
    credentials?: RequestCredentials;
  }

  interface SwaggerOptions {
    domNode: HTMLElement;
    spec: object;
    presets: unknown[];
    layout?: string;
    deepLinking?: boolean;
    docExpansion?: "list" | "full" | "none";
    displayRequestDuration?: boolean;
    requestInterceptor?: (request: SwaggerRequest) => SwaggerRequest;
    onComplete?: () => void;
  }

  interface SwaggerSystem {
    preauthorizeApiKey(scheme: string, value: string): void;
  }

  interface SwaggerUIBundle {
    (options: SwaggerOptions): SwaggerSystem;
    presets: { apis: unknown };
  }

  const SwaggerUI: SwaggerUIBundle;
  export default SwaggerUI;
}
